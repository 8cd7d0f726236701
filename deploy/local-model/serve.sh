#!/usr/bin/env bash
# Serves SmolLM2-135M-Instruct (installed by install.sh) as an OpenAI-compatible API on
# http://127.0.0.1:${LOCAL_MODEL_PORT:-8088}/v1, model name "smollm2-135m", in the foreground.
# Point the worker at it with run-jobs.sh's settings (LLM_PROVIDER=openai,
# LLM_RESPONSE_FORMAT=json-object-schema: llama-cpp-python refuses json_schema but enforces a
# schema given beside json_object, by grammar).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
DIR="${LOCAL_MODEL_DIR:-$HOME/.cache/roadmap-worker/local-model}"
GGUF="$("$HERE/install.sh" | tail -n 1)"   # quick when installed; installs otherwise

# n_ctx: the model's training context, 8192 tokens. A call's prompt (under ~1,500 tokens for the
# worker's prompts) and its answer share it; llama-cpp-python lowers a max_tokens that does not
# fit (an answer then stops as "length"), and refuses only a prompt longer than the context.
# Threads: 2 (the cores) for prompt processing, 1 for generation. A token is a few ms of work
# split by barriers; when other processes also want the 2 cores (builds, tests), a descheduled
# OpenMP thread stalls every barrier: measured here with 2 generation threads, 260-430 ms a
# token instead of 14, against 28 ms with 1. On an idle machine 2 generation threads are ~2x
# faster: LOCAL_MODEL_THREADS=2.
exec "$DIR/venv/bin/python" -m llama_cpp.server \
  --model "$GGUF" \
  --model_alias "${LOCAL_MODEL_ALIAS:-smollm2-135m}" \
  --host 127.0.0.1 --port "${LOCAL_MODEL_PORT:-8088}" \
  --n_ctx "${LOCAL_MODEL_CTX:-8192}" \
  --n_threads "${LOCAL_MODEL_THREADS:-1}" --n_threads_batch 2
