/* What an arm64 CPU (or an emulated CPU model) offers the kernels, and whether its SME outer products are
 * right. Prints one JSON object: "features", the HWCAP/HWCAP2 bits XNNPACK's cpuinfo dispatches on (dotprod,
 * fp16 arithmetic, i8mm, SVE, SME, SME2, ...); and, when SME is there, one SMOPA (4-way, int8 -> int32) and
 * one FMOPA (fp32) on known inputs checked element by element against plain C. mdship/devices.py runs it under
 * each qemu CPU model of the arm64 matrix and excludes a model whose outer products are wrong, naming this
 * reason: that is the emulator, not the bundle.
 *
 * Found with it (issue #18): Debian 12's qemu 7.2 gets SMOPA (4-way) wrong at every streaming vector length
 * (only elements at even row and even column are right: 48 of 64 wrong at SVL 256), FMOPA (fp32) right; Debian
 * 13's qemu 10.0 gets them right. Prints one JSON object; exit 0 whether or not the results are right.
 */
#include <stdint.h>
#include <stdio.h>
#include <sys/auxv.h>

long mdship_svl_bytes(void);
void mdship_sve_smopa(const int8_t* a, const int8_t* b, int32_t* out);
void mdship_sve_fmopa(const float* a, const float* b, float* out);
void mdship_sve_fmopa_f16(const __fp16* a, const __fp16* b, float* out);

#define HWCAP2_SME_BIT (1UL << 23)

static const struct {
  const char* name;
  int word;  // 1: AT_HWCAP, 2: AT_HWCAP2 (Linux arch/arm64 uapi hwcap.h bit numbers)
  int bit;
} kFeatures[] = {{"asimd", 1, 1},     {"fphp", 1, 9},      {"asimdhp", 1, 10},   {"asimddp", 1, 20},
                 {"sve", 1, 22},      {"asimdfhm", 1, 23}, {"sve2", 2, 1},       {"svei8mm", 2, 9},
                 {"i8mm", 2, 13},     {"bf16", 2, 14},     {"sme", 2, 23},       {"sme_i8i32", 2, 26},
                 {"sme_f16f32", 2, 27}, {"sme_f32f32", 2, 29}, {"sme_fa64", 2, 30}, {"sme2", 2, 37},
                 {"sme2p1", 2, 38},   {"sme_f16f16", 2, 44}};

static void print_features(void) {
  const unsigned long words[3] = {0, getauxval(AT_HWCAP), getauxval(AT_HWCAP2)};
  const char* sep = "";
  printf("{\"features\": [");
  for (unsigned i = 0; i < sizeof kFeatures / sizeof kFeatures[0]; ++i)
    if (words[kFeatures[i].word] >> kFeatures[i].bit & 1) {
      printf("%s\"%s\"", sep, kFeatures[i].name);
      sep = ", ";
    }
  printf("]");
}

static long check_smopa(long svl) {
  const long n = svl / 4;
  int8_t a[256], b[256];
  int32_t c[64 * 64];
  for (long i = 0; i < svl; ++i) {
    a[i] = (int8_t)(i * 7 - 50);
    b[i] = (int8_t)(100 - i * 3);
  }
  mdship_sve_smopa(a, b, c);
  long wrong = 0;
  for (long r = 0; r < n; ++r)
    for (long col = 0; col < n; ++col) {
      int32_t want = 0;
      for (int k = 0; k < 4; ++k) want += a[4 * r + k] * b[4 * col + k];
      wrong += c[r * n + col] != want;
    }
  return wrong;
}

static long check_fmopa(long svl) {
  const long n = svl / 4;
  float a[64] = {0}, b[64] = {0}, c[64 * 64];
  for (long i = 0; i < n; ++i) {
    a[i] = 0.5f * (float)i - 1.0f;
    b[i] = 2.0f - 0.25f * (float)i;
  }
  mdship_sve_fmopa(a, b, c);
  long wrong = 0;
  for (long r = 0; r < n; ++r)
    for (long col = 0; col < n; ++col) wrong += c[r * n + col] != a[r] * b[col];
  return wrong;
}

// Small integers in fp16: every product and sum is exact, so any difference is the instruction's.
static long check_fmopa_f16(long svl) {
  const long n = svl / 4;
  __fp16 a[128] = {0}, b[128] = {0};
  float c[64 * 64];
  for (long i = 0; i < 2 * n; ++i) {
    a[i] = (__fp16)(float)(i % 13 - 6);
    b[i] = (__fp16)(float)(5 - i % 7);
  }
  mdship_sve_fmopa_f16(a, b, c);
  long wrong = 0;
  for (long r = 0; r < n; ++r)
    for (long col = 0; col < n; ++col) {
      const float want = (float)a[2 * r] * (float)b[2 * col] + (float)a[2 * r + 1] * (float)b[2 * col + 1];
      wrong += c[r * n + col] != want;
    }
  return wrong;
}

int main(void) {
  print_features();
  if (!(getauxval(AT_HWCAP2) & HWCAP2_SME_BIT)) {
    printf("}\n");
    return 0;
  }
  const long svl = mdship_svl_bytes(), n = svl / 4;
  if (svl > 256) {
    printf(", \"svl_bits\": %ld, \"error\": \"streaming vector length above 2048 bits\"}\n", svl * 8);
    return 0;
  }
  printf(", \"svl_bits\": %ld, \"elements\": %ld, \"smopa_4way_i8_wrong\": %ld, \"fmopa_f32_wrong\": %ld, "
         "\"fmopa_2way_f16_wrong\": %ld}\n",
         svl * 8, n * n, check_smopa(svl), check_fmopa(svl), check_fmopa_f16(svl));
  return 0;
}
