// Command kstatus prints what sigs.k8s.io/cli-utils' kstatus (the library Flux's health checks
// and `kubectl wait`-style gates use) computes for one object: read as JSON on stdin, written
// as one JSON line {"status": "InProgress|Current|Failed|Terminating|NotFound|Unknown",
// "message": "..."} on stdout. The integration tests run it on objects read from a real API
// server, so what the docs say Flux sees is checked against kstatus itself.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("reading stdin: %v", err)
	}
	obj := &unstructured.Unstructured{}
	if err := obj.UnmarshalJSON(data); err != nil {
		fail("stdin is not one Kubernetes object in JSON: %v", err)
	}
	result, err := status.Compute(obj)
	if err != nil {
		fail("kstatus: %v", err)
	}
	out, err := json.Marshal(map[string]string{"status": result.Status.String(), "message": result.Message})
	if err != nil {
		fail("encoding the result: %v", err)
	}
	fmt.Println(string(out))
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "kstatus: "+format+"\n", args...)
	os.Exit(2)
}
