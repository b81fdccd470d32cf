/* An LD_AUDIT module that names the KleidiAI micro-kernels a process calls.
 *
 * XNNPACK's own micro-kernels are hidden symbols in the executorch wheel's libexecutorch_backend_xnnpack.so,
 * but the KleidiAI ones it dispatches to (kai_run_*: the SME/SME2, i8mm and dotprod int8 and fp16/fp32
 * matmuls and their packing routines) are exported and called through the PLT with lazy binding. glibc's
 * auditing interface reports each such binding once, at the first call: that is the list of KleidiAI
 * routines that ran. Built by tools/build_runner_arm64.sh for arm64, used by mdship/devices.py:
 *
 *   LD_AUDIT=kernel_trace.so MDSHIP_KERNEL_TRACE=out.txt qemu-aarch64 ... mdship-runner BUNDLE --selftest
 *
 * Each line of out.txt is one symbol: "<symbol>\t<library it binds from>". Symbols bound at load time
 * (function pointers taken through the GOT) are not reported; none of kai_run_* is.
 */
#define _GNU_SOURCE
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static FILE* out;

unsigned int la_version(unsigned int version) {
  const char* path = getenv("MDSHIP_KERNEL_TRACE");
  out = path ? fopen(path, "w") : NULL;
  if (out) setvbuf(out, NULL, _IOLBF, 0);
  return version;
}

unsigned int la_objopen(struct link_map* map, Lmid_t lmid, uintptr_t* cookie) {
  (void)lmid;
  *cookie = (uintptr_t)map;
  return LA_FLG_BINDTO | LA_FLG_BINDFROM;
}

uintptr_t la_symbind64(Elf64_Sym* sym, unsigned int ndx, uintptr_t* refcook, uintptr_t* defcook,
                       unsigned int* flags, const char* symname) {
  (void)ndx; (void)refcook;
  *flags |= LA_SYMB_NOPLTENTER | LA_SYMB_NOPLTEXIT;
  if (out && strncmp(symname, "kai_", 4) == 0) {
    const struct link_map* def = (const struct link_map*)*defcook;
    const char* lib = def && def->l_name ? strrchr(def->l_name, '/') : NULL;
    fprintf(out, "%s\t%s\n", symname, lib ? lib + 1 : "?");
  }
  return sym->st_value;
}
