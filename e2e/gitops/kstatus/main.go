// kstatus reads one Kubernetes object as JSON on standard input, computes its status with
// kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status, what Flux's health checks and
// `kpt live status` use) and prints {"status": ..., "message": ...} as one JSON line.
// The e2e test tests/e2e_gitops.rs feeds it real AgentSecretBinding objects.
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
	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("reading stdin: %v", err)
	}
	// Decoded as the API machinery decodes it (integers stay int64, which kstatus's
	// generation check requires), not with a plain json.Unmarshal (float64).
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(in); err != nil {
		fail("decoding the object: %v", err)
	}
	res, err := status.Compute(u)
	if err != nil {
		fail("status.Compute: %v", err)
	}
	out, err := json.Marshal(map[string]string{
		"status":  res.Status.String(),
		"message": res.Message,
	})
	if err != nil {
		fail("encoding: %v", err)
	}
	fmt.Println(string(out))
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "kstatus: "+format+"\n", args...)
	os.Exit(1)
}
