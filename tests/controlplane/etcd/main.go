// Command etcd is upstream etcd 3.6 (Debian's 3.4 is outside the client skew
// of Kubernetes 1.34), built from go.etcd.io/etcd/server/v3.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
