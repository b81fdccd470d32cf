// SME outer products for tools/arm64/cpu_probe.c, one instruction each, result tile ZA0.S stored row by row:
//   SMOPA (4-way, int8 -> int32): out[r][c] = sum over k<4 of a[4r+k]*b[4c+k];  FMOPA (fp32): out[r][c] = a[r]*b[c]
//   FMOPA (widening, fp16 -> fp32): out[r][c] = a[2r]*b[2c] + a[2r+1]*b[2c+1]
	.arch armv8.2-a+sve+sme
	.text
	.global mdship_sve_smopa, mdship_sve_fmopa, mdship_sve_fmopa_f16, mdship_svl_bytes
mdship_svl_bytes:            // streaming vector length in bytes
	rdsvl x0, #1
	ret
// x0 = a (SVL bytes), x1 = b (SVL bytes), x2 = out, w3 = tile (0..3)
.macro OUTER op, ty, lty
	stp d8, d9, [sp, -64]!
	stp d10, d11, [sp, 16]
	stp d12, d13, [sp, 32]
	stp d14, d15, [sp, 48]
	smstart
	ptrue p0.b
	ld1b {z0.b}, p0/z, [x0]
	ld1b {z1.b}, p0/z, [x1]
	zero {za}
	\op za0.s, p0/m, p0/m, z0.\ty, z1.\ty
	cntw x4                     // rows of a .s tile
	mov w12, #0
1:	st1w {za0h.s[w12, 0]}, p0, [x2]
	addvl x2, x2, #1
	add w12, w12, #1
	cmp x12, x4
	b.lt 1b
	smstop
	ldp d12, d13, [sp, 32]
	ldp d14, d15, [sp, 48]
	ldp d10, d11, [sp, 16]
	ldp d8, d9, [sp], 64
	ret
.endm
mdship_sve_smopa:
	OUTER smopa, b
mdship_sve_fmopa:
	OUTER fmopa, s
mdship_sve_fmopa_f16:
	OUTER fmopa, h
