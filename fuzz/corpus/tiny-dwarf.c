/* A small program with DWARF (inlined functions included): a seed of the fuzz harness's ELF
   target. Built by `gcc -g -O2 -Wl,--build-id -o elf/tiny-dwarf.elf tiny-dwarf.c` (in fuzz/corpus);
   elf/tiny-stripped.elf is `strip -o elf/tiny-stripped.elf elf/tiny-dwarf.elf`. */
#include <stdio.h>
static inline __attribute__((always_inline)) int square(int x) { return x * x; }
__attribute__((noinline)) int sum_squares(int n) {
    int s = 0;
    for (int i = 0; i < n; i++) s += square(i);
    return s;
}
__attribute__((noinline)) int twice(int n) { return 2 * sum_squares(n); }
int main(int argc, char **argv) {
    (void)argv;
    printf("%d\n", twice(argc * 10));
    return 0;
}
