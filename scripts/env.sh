# Sourced by the Makefile's recipes: points tch at pip's libtorch (torch 2.11.0).
torch_lib=$(python3 - <<'PY' 2>/dev/null || true
import importlib.util, os
s = importlib.util.find_spec("torch")
print(os.path.join(os.path.dirname(s.origin), "lib") if s and s.origin else "")
PY
)
export LIBTORCH_USE_PYTORCH=1
if [[ -n "$torch_lib" ]]; then
  export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
