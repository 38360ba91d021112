// An example floe validator in C, a second guest language next to Rust: it rejects
// change events whose value carries a negative `amount` (Debezium envelope, decimal
// as a string or a number: `"amount":"-...` or `"amount":-...`) and accepts the rest.
//
// bindings/ holds what `wit-bindgen c wit --world validator` (wit-bindgen-cli 0.61.0)
// generated from wit/floe.wit; build.sh compiles both with Debian's clang-22 against
// wasi-libc (malloc/memcpy only: the component imports nothing) and floe-componentize
// turns the module into a component.

#include <stdlib.h>
#include <string.h>

#include "bindings/validator.h"

static const char NEEDLE[] = "\"amount\":";

// Whether `value` holds `"amount":` followed (after spaces and an optional quote) by '-'.
static bool negative_amount(const uint8_t *value, size_t len) {
  size_t n = sizeof(NEEDLE) - 1;
  for (size_t i = 0; i + n < len; i++) {
    if (memcmp(value + i, NEEDLE, n) != 0) continue;
    size_t j = i + n;
    while (j < len && (value[j] == ' ' || value[j] == '"')) j++;
    if (j < len && value[j] == '-') return true;
  }
  return false;
}

bool exports_validator_validate(validator_batch_t *batch, validator_list_verdict_t *ret,
                                validator_error_t *err) {
  (void)err;
  size_t count = batch->events.len;
  ret->len = count;
  ret->ptr = count ? calloc(count, sizeof(validator_verdict_t)) : NULL;
  if (count && !ret->ptr) abort();
  for (size_t i = 0; i < count; i++) {
    floe_cdc_types_event_t *e = &batch->events.ptr[i];
    validator_verdict_t *v = &ret->ptr[i];
    if (e->value.is_some && negative_amount(e->value.val.ptr, e->value.val.len)) {
      v->tag = FLOE_CDC_TYPES_VERDICT_REJECTED;
      validator_string_dup(&v->val.rejected, "c-rules: amount must be non-negative");
    } else {
      v->tag = FLOE_CDC_TYPES_VERDICT_OK;
    }
  }
  validator_batch_free(batch);
  return true;
}
