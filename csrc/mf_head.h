/* Output-head stages of the compiled core (csrc/mf_head.c) for the BitNet step
 * (src/mulfree/engine/bitnet_plan.py) and the plan runner (csrc/mf_plan.c).
 *
 * int4 table layout (engine.bitnet_model.QuantizedHead, engine.modules.Int4Embedding): a row of
 * D entries is G = ceil(D / 32) groups of 32; group g of row v is 16 bytes at
 * codes[v][16 g .. 16 g + 15], byte j holding entry 32 g + 2 j in its low nibble and 32 g + 2 j + 1
 * in its high nibble, each as the code q + 8 (w = (code - 8) * step[v][g]); the steps are given
 * to the stage as bfloat16 bit patterns [V][G].
 */
#ifndef MF_HEAD_H
#define MF_HEAD_H

#include <stdint.h>

#define MF_HEAD_I4_GROUP 32

int mf_op_tfm_head_i4(const int64_t *a);   /* "pllplppll" */
int mf_op_tfm_head_i8(const int64_t *a);   /* "pllplppll" */
int mf_op_tfm_head_bf16(const int64_t *a); /* "pllplpll": bfloat16 table [V][D] */

#endif
