// First and second touch (memset) of 64 MiB freshly mapped, with or without MADV_HUGEPAGE, one
// thread; optionally pausing between rounds. Usage: ./touch HUGE(0|1) PAUSE_S ROUNDS
//   gcc -O2 fresh_page_touch.c -o touch
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e3+t.tv_nsec/1e6;}
int main(int argc,char**argv){
  size_t n=(size_t)64<<20; int huge=atoi(argv[1]); double sleep_s=atof(argv[2]); int reps=atoi(argv[3]);
  for(int r=0;r<reps;r++){
    char*p=mmap(NULL,n+(2<<20),PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
    char*a=(char*)(((size_t)p+(2<<20)-1)&~((size_t)(2<<20)-1));
    if(huge) madvise(a,n,MADV_HUGEPAGE); else madvise(a,n,MADV_NOHUGEPAGE);
    double t0=now(); memset(a,1,n); double t1=now(); memset(a,2,n); double t2=now();
    printf("huge=%d sleep=%.1f first touch %.2f ms, second %.2f ms\n",huge,sleep_s,t1-t0,t2-t1);
    munmap(p,n+(2<<20));
    usleep((useconds_t)(sleep_s*1e6));
  }
}
