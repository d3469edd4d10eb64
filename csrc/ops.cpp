// The op schemas, declared once (pytorch/extension-cpp style); each backend registers its
// implementation with TORCH_LIBRARY_IMPL in its own file (unmask_cpu.cpp, attention_cpu.cpp, ...).
// Python: import mini_dlm._C, then torch.ops.mini_dlm.unmask(...); mini_dlm/ops.py wraps it.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// An empty module named _C, so that `import mini_dlm._C` loads this library and runs the
// registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(mini_dlm, m) {
  // tokens and eligible are updated in place; returns the count committed per batch row.
  // rule: "schedule" (uses k), "threshold" (uses tau), "factor" (Fast-dLLM's code) or
  // "factor_strict" (the longest run), both with factor. banned: ids never guessed; demote:
  // ids whose guesses score -inf (committed last).
  m.def("unmask(Tensor logits, Tensor(a!) tokens, Tensor(b!) eligible, int[] banned, int[] demote, Tensor? k, "
        "float tau, float factor, str rule, str kind, Tensor? scores, float temperature, int seed) -> Tensor");
  // softmax(q K^T / sqrt(D)) V over K = [k_prefix[r, :, :prefix_len[r]] ; k ; k_suffix], read in place.
  m.def("block_attention(Tensor q, Tensor k, Tensor v, Tensor? k_prefix, Tensor? v_prefix, Tensor? prefix_len, "
        "Tensor? k_suffix, Tensor? v_suffix) -> Tensor");
}
