/* libcufft.so.11 shim for the device check only: forwards the five cuFFT calls that
   libastra (built against CUDA 12) needs to whichever libcufft.so.12 the CUDA-13 image has. */
#include <dlfcn.h>
#include <stdio.h>
static void *lib;
static void *sym(const char *name) {
    if (!lib) lib = dlopen("libcufft.so.12", RTLD_NOW | RTLD_GLOBAL);
    if (!lib) { fprintf(stderr, "cufft shim: %s\n", dlerror()); return 0; }
    return dlsym(lib, name);
}
typedef int (*f2)(int, void *);
typedef int (*f3)(int, void *, void *);
typedef int (*f1)(int);
typedef int (*fp)(int *, int, int, int);
int cufftSetStream(int p, void *s) { f2 f = (f2)sym("cufftSetStream"); return f ? f(p, s) : 5; }
int cufftExecC2R(int p, void *a, void *b) { f3 f = (f3)sym("cufftExecC2R"); return f ? f(p, a, b) : 5; }
int cufftExecR2C(int p, void *a, void *b) { f3 f = (f3)sym("cufftExecR2C"); return f ? f(p, a, b) : 5; }
int cufftDestroy(int p) { f1 f = (f1)sym("cufftDestroy"); return f ? f(p) : 5; }
int cufftPlan1d(int *p, int n, int t, int b) { fp f = (fp)sym("cufftPlan1d"); return f ? f(p, n, t, b) : 5; }
