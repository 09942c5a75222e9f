/* Time to fault in 64 MiB of fresh anonymous memory (one write per 4 KiB), with and without
 * the huge-page hint, against a memset of the same memory once mapped (figures in README.md;
 * not built by the project).
 *   gcc -O2 benchmarks/results/cpu_xeon_20261126_c/fresh_pages.c -o /tmp/fresh_pages
 *   /tmp/fresh_pages 1   # MADV_HUGEPAGE;  /tmp/fresh_pages 0: 4 KiB pages */
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int argc,char**argv){ size_t sz=64<<20; int huge=atoi(argv[1]);
 for(int r=0;r<5;r++){
  char*p=mmap(0,sz+(2<<20),PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
  char*a=(char*)(((size_t)p+(2<<20)-1)&~((size_t)(2<<20)-1));
  if(huge)madvise(a,sz,MADV_HUGEPAGE);
  double t=now(); for(size_t i=0;i<sz;i+=4096)a[i]=1; double t1=now();
  memset(a,2,sz); double t2=now();
  printf("huge=%d touch %.2f ms (%.1f GB/s)  memset warm %.2f ms (%.1f GB/s)\n",huge,(t1-t)*1e3,sz/(t1-t)/1e9,(t2-t1)*1e3,sz/(t2-t1)/1e9);
  munmap(p,sz+(2<<20));}
}
