# Sourced by the benchmarks that need a fast fixed upstream (call.sh,
# shadow.sh, submit.sh).
#
# fast_upstream_start DIR PORT: nginx (one worker, loopback) answering every
# POST to /v1/chat/completions on PORT with one fixed chat-completions body;
# its files go under DIR/nginx.  fast_upstream_stop DIR stops it.
# fast_upstream_rollout PORT prints the SQL of the rollout "default" (stage
# ramp_25) whose two models, fast-old and fast-new, both call it.
fast_upstream_start() {
    local dir=$1 nport=$2
    local body='{"id":"c1","object":"chat.completion","created":1,"model":"fast","choices":[{"index":0,"message":{"role":"assistant","content":"Thanks for reaching out. Your order ships tomorrow.","refusal":null},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":8,"total_tokens":13}}'
    mkdir -p "$dir/nginx/tmp"
    cat > "$dir/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/nginx/tmp;
    proxy_temp_path $dir/nginx/tmp;
    fastcgi_temp_path $dir/nginx/tmp;
    uwsgi_temp_path $dir/nginx/tmp;
    scgi_temp_path $dir/nginx/tmp;
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
    nginx -c "$dir/nginx/nginx.conf" -p "$dir/nginx" -e "$dir/nginx/error.log"
}

fast_upstream_stop() {
    kill "$(cat "$1/nginx/nginx.pid" 2>/dev/null)" 2>/dev/null || true
}

fast_upstream_rollout() {
    cat <<SQL
INSERT INTO canary_models (name, provider, base_url, model, api_key_env)
VALUES ('fast-old', 'openai', 'http://127.0.0.1:$1/v1', 'fast', 'LLM_CANARY_TEST_KEY'),
       ('fast-new', 'openai', 'http://127.0.0.1:$1/v1', 'fast', 'LLM_CANARY_TEST_KEY');
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('default', 'ramp_25', 'fast-old', 'fast-new')
ON CONFLICT (name) DO UPDATE SET stage = excluded.stage, old_model = excluded.old_model, new_model = excluded.new_model;
SQL
}
