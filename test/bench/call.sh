#!/usr/bin/env bash
# canary_call overhead: pgbench calling canary_call against a fast local
# upstream (nginx answering a fixed chat-completions body), side by side with
# wrk sending the same POST straight to nginx, for 1, 8 and 32 clients.
# Run as postgres with the extension installed (test/bench/run.sh call does).
set -euo pipefail
top="$(cd "$(dirname "$0")/../.." && pwd)"
dir=/tmp/llm_canary_bench_call; port=55498; nport=55497; secs=${BENCH_SECONDS:-10}
rm -rf "$dir"; mkdir -p "$dir/nginx"
body='{"id":"c1","object":"chat.completion","created":1,"model":"fast","choices":[{"index":0,"message":{"role":"assistant","content":"Thanks for reaching out. Your order ships tomorrow.","refusal":null},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":8,"total_tokens":13}}'
cat > "$dir/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $dir/nginx;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$nport;
        location /v1/chat/completions {
            default_type application/json;
            return 200 '$body';
        }
    }
}
CONF
/usr/sbin/nginx -c "$dir/nginx/nginx.conf" -p "$dir/nginx"
cleanup() { kill "$(cat "$dir/nginx/nginx.pid")" 2>/dev/null || true; bash "$top/test/cluster.sh" stop "$dir/data"; }
trap cleanup EXIT
bash "$top/test/cluster.sh" start "$dir/data" "$port" bench >/dev/null
PSQL="psql -h /tmp -p $port -d bench -X -q"
$PSQL <<SQL
INSERT INTO canary_models (name, provider, base_url, model, api_key_env)
VALUES ('fast-old', 'openai', 'http://127.0.0.1:$nport/v1', 'fast', 'LLM_CANARY_TEST_KEY'),
       ('fast-new', 'openai', 'http://127.0.0.1:$nport/v1', 'fast', 'LLM_CANARY_TEST_KEY');
UPDATE canary_config SET old_model = 'fast-old', new_model = 'fast-new', stage = 'ramp_25';
SQL
echo "SELECT canary_call('Where is my order?', 'u_' || (random() * 100000)::int);" > "$dir/call.pgbench"
cat > "$dir/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body   = '{"model":"fast","messages":[{"role":"user","content":"Where is my order?"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
LUA
rss() { $PSQL -At -c "SELECT pg_backend_pid()" >/dev/null; }
printf '%-8s | %-22s | %10s | %8s | %8s\n' clients tool calls/s p50_ms p99_ms
for c in 1 8 32; do
    threads=$(( c < 2 ? 1 : 2 ))
    w=$(wrk -t$threads -c$c -d${secs}s --latency -s "$dir/post.lua" "http://127.0.0.1:$nport/v1/chat/completions")
    wr=$(echo "$w" | awk '/Requests\/sec/ {print $2}')
    wp50=$(echo "$w" | awk '$1=="50%" {print $2}')
    wp99=$(echo "$w" | awk '$1=="99%" {print $2}')
    printf '%-8s | %-22s | %10s | %8s | %8s\n' "$c" "wrk -> nginx" "$wr" "$wp50" "$wp99"
    $PSQL -c "SELECT canary_flush()" >/dev/null
    pgbench -h /tmp -p "$port" -n -c "$c" -j "$threads" -T "$secs" -f "$dir/call.pgbench" \
        -l --log-prefix="$dir/pgb$c" bench > "$dir/pgbench$c.out" 2>&1
    tps=$(awk '/^tps/ {print $3; exit}' "$dir/pgbench$c.out")
    lat=$(cat "$dir"/pgb$c* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {printf "%.3f %.3f", a[int(NR*0.5)]/1000, a[int(NR*0.99)]/1000}')
    rm -f "$dir"/pgb$c*
    printf '%-8s | %-22s | %10s | %8s | %8s\n' "$c" "pgbench -> canary_call" "$tps" ${lat}
done
$PSQL -c "SELECT canary_flush()" >/dev/null
$PSQL -c "SELECT enqueued, dropped, written FROM canary_stats()"
