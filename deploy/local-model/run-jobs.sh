#!/usr/bin/env bash
# Runs a 1-week and a 3-week job through a real worker against the local model that serve.sh
# serves, and prints each job's wall time and whether any part of it came from the template
# (fallback) instead of the model. Needs Postgres and RabbitMQ (the development machines' ones
# by default) and a built worker (cargo build; ROADMAP_WORKER names another binary).
# Uses a database and an AMQP namespace of its own, so other workers and tests are left alone.
set -euo pipefail

cd "$(dirname "$0")/../.."
BIN="${ROADMAP_WORKER:-${CARGO_TARGET_DIR:-target}/debug/roadmap-worker}"
OUT="${OUT_DIR:-${CARGO_TARGET_DIR:-target}}"
RUN_ID="localmodel-$$"
DB="${LOCAL_MODEL_DB:-roadmap_localmodel}"
METRICS_PORT="${METRICS_PORT:-9477}"

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/$DB}"
export AMQP_NAMESPACE="${AMQP_NAMESPACE:-$RUN_ID}"
export METRICS_ADDR="127.0.0.1:$METRICS_PORT"
export LLM_PROVIDER=openai
export LLM_BASE_URL="${LLM_BASE_URL:-http://127.0.0.1:${LOCAL_MODEL_PORT:-8088}/v1}"
export LLM_MODEL="${LLM_MODEL:-smollm2-135m}"
# llama-cpp-python refuses response_format json_schema; it enforces a schema sent beside
# json_object by grammar, which a 135M model needs to produce the shape at all.
export LLM_RESPONSE_FORMAT="${LLM_RESPONSE_FORMAT:-json-object-schema}"
# A week's answer is ~1,000-1,300 tokens from this model (2,400 when it runs on in a loop to the
# limit the worker sets, 2,400 a week); at 25-40 tokens/s with the grammar on 1-2 CPU threads
# that is 30-100 s a week, up to ~300 s for a 3-week call: minutes, not the seconds a hosted
# model takes. The timeout covers the longest call; the server answers one call at a time.
export LLM_TIMEOUT_SECS="${LLM_TIMEOUT_SECS:-900}"
# 3 weeks a call (the worker's default): a 3-week job is one batch, so it has no outline call,
# which this model cannot pass (its phases do not cover the weeks 1..=N without gap or overlap,
# and the template outline stands in). A cut answer keeps its complete weeks and the rest is
# asked for in smaller requests.
export BATCH_WEEKS="${BATCH_WEEKS:-3}"
# The server runs one call at a time: phases written side by side would only queue there, each
# waiting call spending its own timeout.
export JOB_PARALLELISM="${JOB_PARALLELISM:-1}"
export LLM_TEMPERATURE="${LLM_TEMPERATURE:-0.7}"
# One week's worth (the worker asks 2,400 tokens a week): a 3-week call that runs on in a loop is
# cut after ~100 s instead of ~470 s; its complete weeks are kept and the rest asked week by week.
export LLM_MAX_OUTPUT_TOKENS="${LLM_MAX_OUTPUT_TOKENS:-2400}"
# Transient failures only (a timeout here is a generation that went on too long: asking the same
# again mostly costs another timeout).
export LLM_MAX_RETRIES="${LLM_MAX_RETRIES:-1}"
export LOG_FORMAT=json RUST_LOG="${RUST_LOG:-info}"

# serve.sh installs on its first run (minutes): wait for it, up to LOCAL_MODEL_WAIT_SECS.
waited=0
until curl -sf "$LLM_BASE_URL/models" >/dev/null; do
  if [ "$waited" -ge "${LOCAL_MODEL_WAIT_SECS:-1200}" ]; then
    echo "no model server at $LLM_BASE_URL after $waited s (run serve.sh)" >&2
    exit 1
  fi
  [ "$waited" -eq 0 ] && echo "waiting for the model server at $LLM_BASE_URL (serve.sh installs on its first run)"
  sleep 5
  waited=$((waited + 5))
done

LOG="$OUT/$RUN_ID-worker.log"
"$BIN" run >"$LOG" 2>&1 &
WORKER=$!
trap 'kill -TERM "$WORKER" 2>/dev/null; wait "$WORKER" 2>/dev/null || true' EXIT
until curl -sf "http://$METRICS_ADDR/readyz" >/dev/null; do
  kill -0 "$WORKER" 2>/dev/null || { echo "worker exited; see $LOG" >&2; tail -5 "$LOG" >&2; exit 1; }
  sleep 1
done
echo "worker pid $WORKER ready; log $LOG; settings: BATCH_WEEKS=$BATCH_WEEKS LLM_TIMEOUT_SECS=$LLM_TIMEOUT_SECS LLM_TEMPERATURE=$LLM_TEMPERATURE LLM_MAX_OUTPUT_TOKENS=$LLM_MAX_OUTPUT_TOKENS JOB_PARALLELISM=$JOB_PARALLELISM"

for weeks in 1 3; do
  event="$OUT/localmodel-${weeks}week-event.json"
  started=$(date +%s)
  # stdout: "published job <id> to ...", then the final event as JSON (progress goes to stderr).
  "$BIN" enqueue --role "${ROLE:-Data Engineer}" --weeks "$weeks" --hours 8 \
    --wait --json --timeout-secs 3600 | tail -n +2 >"$event"
  wall=$(( $(date +%s) - started ))
  job=$(jq -r .job_id "$event")
  jq '.roadmap' "$event" >"$OUT/localmodel-${weeks}week.json"
  # The event counts the batches that fell back to template weeks; whether the outline did is
  # kept only in the job's plan in Postgres.
  outline=$(psql "$DATABASE_URL" -tAc "select coalesce(plan->'outline'->>'source', 'none (one batch: no outline call)') from jobs where job_id = '$job'")
  jq -r --arg wall "$wall" --arg outline "$outline" '
    "\(.duration_weeks)-week job \(.job_id): \(.event) after \($wall) s wall; outline from \($outline);"
    + " \(.batches) batches, \(.fallback_batches) fallback; weeks from: \([.roadmap.weeks[]?.source] | join(","));"
    + " \(.usage.llm_calls) LLM calls, \(.usage.input_tokens) in + \(.usage.output_tokens) out tokens;"
    + " content checks: \(.quality.problems // {} | to_entries | map("\(.key) \(.value)") | join(", ")),"
    + " \(.quality.reasked_batches // 0) batches re-asked for content"' "$event"
done
echo "fallback metrics:"
curl -s "http://$METRICS_ADDR/metrics" | grep -E '^roadmap_(batches|outlines)_total|^roadmap_batch_failures_total' || true
