/* A malloc interposer that keeps freed big blocks mapped for reuse, and nothing else.

Why: XLA:CPU allocates all temporaries of one execution of a compiled program as one block (614 MB for the d2l
RegNetX32 train step at batch 128, 96 px) and frees it when the execution ends. glibc serves a block that big with
a fresh mmap and unmaps it on free, so the kernel faults in and zeroes every page of it on every step (~500
huge-page faults a step, 10-15% of the step on 2 cores). glibc's only way to keep it is to serve every block from
the heap (mmap_max=0, REGNET_JAX_MALLOC=retain), which fragments: small allocations land inside the freed block,
the next step's block no longer fits, and the heap grows by a block at a time (1.6-2.9 GB resident against 1.1 GB).
This library keeps the big blocks out of the heap instead: requests of at least REGNET_JAX_BLOCK_MIN_MB (default
32, glibc's largest dynamic mmap threshold, so exactly the sizes glibc would always map afresh) get their own
2 MiB-aligned mapping with transparent huge pages; a freed one is kept and handed to the next request of about
the same size (the next step's). Everything smaller goes to glibc's own allocator unchanged.

Four policies bound what is kept:
- A request that no kept block fits unmaps every kept block before it maps its own: a program whose blocks are
  all kept never misses, so a miss means another program runs now (training's eval step, then training again),
  and the old blocks would only add to the resident size. The resident size is then what is live, as with
  glibc's own mmaps; each change of phase maps its block once (per eval, not per step).
- At most REGNET_JAX_BLOCK_CACHE (default 3) free blocks, least recently used unmapped first.
- A step can start before its predecessor has released its block (JAX dispatches step n+1 as soon as step n's
  outputs are ready, and the release comes just after). A request that only a live block would fit therefore waits
  up to 10 ms for it to be freed, and takes it; a size whose wait ran out once is not waited for again.
- When a block is freed while another block of the same size is live (such a wait ran out), it is unmapped, not
  kept: keeping both would leave two blocks resident for good.

Loaded with LD_PRELOAD by regnet_jax/runtime.py. Pointers not from here go to glibc's __libc_free, so memory from
any allocation path (glibc's own valloc, memory allocated before the library was loaded) is freed correctly.
regnet_block_cache_stats() is for the tests. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

#define HUGE_PAGE ((size_t)2 << 20)
#define MAX_BLOCKS 64

typedef struct {
  void *ptr;      /* NULL: free slot. Written under `lock`, read without it by `find`. */
  size_t len;     /* mapping length, a multiple of HUGE_PAGE */
  int live;
  uint64_t last;  /* when it was last freed, for LRU eviction */
} block_t;

static block_t blocks[MAX_BLOCKS];
static int nslots;  /* slots ever used; only grows */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t clock_ticks;
static size_t min_bytes = (size_t)32 << 20;
static int max_cached = 3;
static uint64_t maps_made, reuses, waits_won;
/* Waiting for a live block of the size asked for (big_alloc): up to WAIT_POLLS x WAIT_POLL_NS = 10 ms. */
#define WAIT_POLLS 100
#define WAIT_POLL_NS 100000L
#define MAX_NO_WAIT 16
static size_t no_wait[MAX_NO_WAIT];  /* sizes whose wait ran out */
static int nwait_timed_out;

static size_t round_len(size_t n) { return (n + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1); }

static int find(const void *p) {
  if (!p) return -1;
  int n = __atomic_load_n(&nslots, __ATOMIC_ACQUIRE);
  for (int i = 0; i < n; i++)
    if (__atomic_load_n(&blocks[i].ptr, __ATOMIC_ACQUIRE) == p) return i;
  return -1;
}

static void *map_aligned(size_t len) {
  size_t total = len + HUGE_PAGE;
  char *raw = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return NULL;
  char *p = (char *)(((uintptr_t)raw + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
  if (p > raw) munmap(raw, (size_t)(p - raw));
  if (raw + total > p + len) munmap(p + len, (size_t)(raw + total - (p + len)));
  madvise(p, len, MADV_HUGEPAGE);  /* a no-op where THP is off; "always" needs no advice */
  return p;
}

/* Up to 1/8 larger than len: the same program's block, not a much bigger one that a small request would pin. */
static int fits(const block_t *b, size_t len) { return b->len >= len && b->len - len <= len / 8; }

/* The smallest free kept block that fits len, or -1. Under `lock`. */
static int free_fit(size_t len) {
  int best = -1;
  for (int i = 0; i < nslots; i++) {
    block_t *b = &blocks[i];
    if (b->ptr && !b->live && fits(b, len) && (best < 0 || b->len < blocks[best].len)) best = i;
  }
  return best;
}

/* Whether a live block would fit len. Under `lock`. */
static int live_fit(size_t len) {
  for (int i = 0; i < nslots; i++)
    if (blocks[i].ptr && blocks[i].live && fits(&blocks[i], len)) return 1;
  return 0;
}

static int wait_timed_out(size_t len) {
  for (int i = 0; i < nwait_timed_out; i++)
    if (no_wait[i] == len) return 1;
  return 0;
}

/* A block of at least n bytes; *fresh says whether its pages are new (zero). NULL when out of memory. */
static void *big_alloc(size_t n, int *fresh) {
  size_t len = round_len(n);
  pthread_mutex_lock(&lock);
  int best = free_fit(len);
  if (best < 0 && live_fit(len) && !wait_timed_out(len)) {
    /* A live block this request would fit: most likely the previous execution's, released a moment after its
       outputs are ready, which is when JAX dispatches the next step. Mapping a second block now would put both in
       the resident peak (regnetx_400mf's f32 step: 2.1 GB instead of 1.4), so wait for it, briefly. A size
       whose wait ran out once (a program that holds two such blocks at a time) is not waited for again. */
    for (int t = 0; t < WAIT_POLLS && best < 0; t++) {
      pthread_mutex_unlock(&lock);
      struct timespec ts = {0, WAIT_POLL_NS};
      nanosleep(&ts, NULL);
      pthread_mutex_lock(&lock);
      best = free_fit(len);
      if (best < 0 && !live_fit(len)) break;  /* freed and unmapped meanwhile: nothing to wait for */
    }
    if (best >= 0) {
      waits_won++;
    } else if (nwait_timed_out < MAX_NO_WAIT) {
      no_wait[nwait_timed_out++] = len;
    }
  }
  if (best >= 0) {
    blocks[best].live = 1;
    reuses++;
    pthread_mutex_unlock(&lock);
    *fresh = 0;
    return blocks[best].ptr;
  }
  /* A miss: the free blocks kept are of other sizes (another program's: the eval step's while training resumes,
     the state's init). Unmap them before mapping this one, so that what stays resident is what is live, as under
     glibc; a phase that comes back (the next epoch's eval) maps its block again, once. */
  void *evict[MAX_BLOCKS];
  size_t evict_len[MAX_BLOCKS];
  int nevict = 0;
  for (int i = 0; i < nslots; i++) {
    block_t *b = &blocks[i];
    if (b->ptr && !b->live) {
      evict[nevict] = b->ptr;
      evict_len[nevict++] = b->len;
      __atomic_store_n(&b->ptr, NULL, __ATOMIC_RELEASE);
    }
  }
  pthread_mutex_unlock(&lock);
  for (int i = 0; i < nevict; i++) munmap(evict[i], evict_len[i]);
  void *p = map_aligned(len);
  if (!p) return NULL;
  pthread_mutex_lock(&lock);
  int slot = -1;
  for (int i = 0; i < nslots && slot < 0; i++)
    if (!blocks[i].ptr) slot = i;
  if (slot < 0 && nslots < MAX_BLOCKS) slot = nslots;
  if (slot < 0) {  /* 64 live big blocks: let glibc serve this one (aligned for any caller) */
    pthread_mutex_unlock(&lock);
    munmap(p, len);
    *fresh = 0;
    return __libc_memalign(HUGE_PAGE, n);
  }
  blocks[slot].len = len;
  blocks[slot].live = 1;
  maps_made++;
  __atomic_store_n(&blocks[slot].ptr, p, __ATOMIC_RELEASE);
  if (slot == nslots) __atomic_store_n(&nslots, nslots + 1, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&lock);
  *fresh = 1;
  return p;
}

static void big_free(int i) {
  void *unmap[2] = {NULL, NULL};
  size_t unmap_len[2] = {0, 0};
  pthread_mutex_lock(&lock);
  block_t *b = &blocks[i];
  int twin_live = 0, cached = 0, lru = -1;
  for (int j = 0; j < nslots; j++) {
    block_t *o = &blocks[j];
    if (j == i || !o->ptr) continue;
    if (o->live && o->len == b->len) twin_live = 1;
    if (!o->live) {
      cached++;
      if (lru < 0 || o->last < blocks[lru].last) lru = j;
    }
  }
  if (twin_live || max_cached <= 0) {
    unmap[0] = b->ptr;
    unmap_len[0] = b->len;
    __atomic_store_n(&b->ptr, NULL, __ATOMIC_RELEASE);
  } else {
    b->live = 0;
    b->last = ++clock_ticks;
    if (cached >= max_cached) {
      unmap[1] = blocks[lru].ptr;
      unmap_len[1] = blocks[lru].len;
      __atomic_store_n(&blocks[lru].ptr, NULL, __ATOMIC_RELEASE);
    }
  }
  pthread_mutex_unlock(&lock);
  for (int k = 0; k < 2; k++)
    if (unmap[k]) munmap(unmap[k], unmap_len[k]);
}

static size_t big_len(const void *p) {
  int i = find(p);
  return i >= 0 ? blocks[i].len : 0;
}

void *malloc(size_t n) {
  int fresh;
  return n >= min_bytes ? big_alloc(n, &fresh) : __libc_malloc(n);
}

void free(void *p) {
  int i = find(p);
  if (i >= 0)
    big_free(i);
  else if (p)
    __libc_free(p);
}

void *calloc(size_t count, size_t size) {
  size_t n;
  if (__builtin_mul_overflow(count, size, &n)) {
    errno = ENOMEM;
    return NULL;
  }
  if (n < min_bytes) return __libc_calloc(count, size);
  int fresh;
  void *p = big_alloc(n, &fresh);
  if (p && !fresh) memset(p, 0, n);  /* a fresh mapping is zero already; touching it would fault it all in */
  return p;
}

void *realloc(void *p, size_t n) {
  size_t have = big_len(p);
  if (!have && n < min_bytes) return __libc_realloc(p, n);
  if (have && n <= have && n >= min_bytes) return p;
  void *q = malloc(n);
  if (!q) return NULL;
  if (p) {
    size_t old = have ? have : malloc_usable_size(p);
    memcpy(q, p, old < n ? old : n);
    free(p);
  }
  return q;
}

static void *aligned(size_t align, size_t n) {
  int fresh;
  return (n >= min_bytes && align <= HUGE_PAGE) ? big_alloc(n, &fresh) : __libc_memalign(align, n);
}

int posix_memalign(void **out, size_t align, size_t n) {
  if (align < sizeof(void *) || (align & (align - 1))) return EINVAL;
  void *p = aligned(align, n);
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}

void *aligned_alloc(size_t align, size_t n) { return aligned(align, n); }
void *memalign(size_t align, size_t n) { return aligned(align, n); }

size_t malloc_usable_size(void *p) {
  static size_t (*libc_usable)(void *);
  size_t n = big_len(p);
  if (n) return n;
  if (!libc_usable) libc_usable = (size_t (*)(void *))dlsym(RTLD_NEXT, "malloc_usable_size");
  return libc_usable ? libc_usable(p) : 0;
}

/* live, cached, maps made, reuses; for the tests. */
/* How many requests waited for a live block and got it (big_alloc). For the tests. */
uint64_t regnet_block_cache_waits(void) {
  pthread_mutex_lock(&lock);
  uint64_t n = waits_won;
  pthread_mutex_unlock(&lock);
  return n;
}

void regnet_block_cache_stats(uint64_t out[4]) {
  pthread_mutex_lock(&lock);
  out[0] = out[1] = 0;
  for (int i = 0; i < nslots; i++)
    if (blocks[i].ptr) out[blocks[i].live ? 0 : 1]++;
  out[2] = maps_made;
  out[3] = reuses;
  pthread_mutex_unlock(&lock);
}

/* A fork while another thread holds the lock would leave it held forever in the child. */
static void before_fork(void) { pthread_mutex_lock(&lock); }
static void after_fork(void) { pthread_mutex_unlock(&lock); }

__attribute__((constructor)) static void init(void) {
  const char *s = getenv("REGNET_JAX_BLOCK_MIN_MB");
  if (s && *s) {
    long long mb = strtoll(s, NULL, 10);
    if (mb > 0) min_bytes = (size_t)mb << 20;
  }
  s = getenv("REGNET_JAX_BLOCK_CACHE");
  if (s && *s) max_cached = (int)strtol(s, NULL, 10);
  pthread_atfork(before_fork, after_fork, after_fork);
}
