# The handler: its first argument is the event (JSON), what it prints to stdout is the result.
# Lines for the log go to stderr.
handler () {
  path=$(printf '%s' "$1" | sed -n 's/.*"rawPath": *"\([^"]*\)".*/\1/p')
  echo "greeting from $path" >&2
  printf '{"statusCode": 200, "headers": {"Content-Type": "text/plain"}, "body": "Hello from sh at %s"}' "$path"
}
