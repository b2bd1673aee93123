// Command kube-apiserver is the upstream kube-apiserver, built from the
// Kubernetes Go modules because no package registry ships the binary.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
