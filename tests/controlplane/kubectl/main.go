// Command kubectl is the upstream kubectl, built from the Kubernetes Go modules at the same
// version as kube-apiserver, because no package registry ships a current binary.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
)

func main() {
	os.Exit(cli.Run(cmd.NewDefaultKubectlCommand()))
}
