// Command kubelet is the upstream kubelet, built from the pinned Kubernetes Go modules.
package main

import (
	"context"
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	// A real context: nil panics in klog.
	os.Exit(cli.Run(app.NewKubeletCommand(context.Background())))
}
