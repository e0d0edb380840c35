// Command etcd is the etcd server built from its published Go modules: the
// project needs an etcd newer than the one Debian packages, and no registry
// reachable from CI ships etcd binaries.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
