// A Lambda function in Go with only the standard library: the program is its own custom runtime.
// It asks the Runtime API (AWS_LAMBDA_RUNTIME_API) for the next event, runs handle, and posts the
// result back, forever. Build it as `bootstrap` (make examples) and deploy this directory.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// event is the part of an API Gateway HTTP API (payload 2.0) event this function reads.
type event struct {
	RawPath               string            `json:"rawPath"`
	QueryStringParameters map[string]string `json:"queryStringParameters"`
}

type response struct {
	StatusCode int               `json:"statusCode"`
	Headers    map[string]string `json:"headers"`
	Body       string            `json:"body"`
}

func handle(ev event, deadline time.Time) (response, error) {
	name := ev.QueryStringParameters["name"]
	if name == "" {
		name = "world"
	}
	if name == "fail" {
		return response{}, fmt.Errorf("asked to fail")
	}
	fmt.Printf("greeting %s with %d ms left\n", name, time.Until(deadline).Milliseconds())
	return response{StatusCode: 200, Headers: map[string]string{"Content-Type": "text/plain"},
		Body: fmt.Sprintf("Hello %s from Go", name)}, nil
}

func main() {
	api := "http://" + os.Getenv("AWS_LAMBDA_RUNTIME_API") + "/2018-06-01/runtime"
	client := &http.Client{} // keep-alive: one connection for the instance's life
	for {
		resp, err := client.Get(api + "/invocation/next")
		if err != nil {
			fmt.Fprintln(os.Stderr, "next:", err)
			os.Exit(1)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		id := resp.Header.Get("Lambda-Runtime-Aws-Request-Id")
		var ms int64
		fmt.Sscan(resp.Header.Get("Lambda-Runtime-Deadline-Ms"), &ms)

		var ev event
		out, err := response{}, json.Unmarshal(body, &ev)
		if err == nil {
			out, err = handle(ev, time.UnixMilli(ms))
		}
		var path string
		var payload []byte
		if err != nil {
			path = "/invocation/" + id + "/error"
			payload, _ = json.Marshal(map[string]interface{}{"errorMessage": err.Error(), "errorType": "HandlerError",
				"stackTrace": []string{}})
		} else {
			path = "/invocation/" + id + "/response"
			payload, _ = json.Marshal(out)
		}
		r, err := client.Post(api+path, "application/json", bytes.NewReader(payload))
		if err != nil {
			fmt.Fprintln(os.Stderr, "post:", err)
			os.Exit(1)
		}
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
}
