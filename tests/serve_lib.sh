# serve_lib.sh — sourced by the tests that talk to `fedllm serve`.
# serve_start BINARY ARGS...: starts `BINARY serve ARGS... --port 0` (stdout serve.out, stderr
# serve.log in the current directory) and waits up to 10 s for its "listening on" line; sets
# server (its pid) and port, or prints why it did not start and exits 1.
serve_start() {
  local bin=$1
  shift
  "$bin" serve "$@" --port 0 >serve.out 2>serve.log &
  server=$!
  port=
  for _ in $(seq 100); do
    port=$(grep -o 'listening on http://127.0.0.1:[0-9]*' serve.log 2>/dev/null | grep -o '[0-9]*$')
    [ -n "$port" ] && return 0
    sleep 0.1
  done
  echo "FAILED: the server did not start: $(cat serve.log)" >&2
  kill "$server" 2>/dev/null
  exit 1
}
