// Command etcd is the upstream etcd server, built from its Go module so that the pinned
// release in go.mod is exactly what the e2e cluster stores its data in.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
