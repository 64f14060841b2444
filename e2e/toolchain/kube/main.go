// Command kube is one multi-call binary for the Kubernetes control plane and kubectl.
//
// The four programs share nearly all of their packages, so one binary links once instead of
// four times. It runs the program named by argv[0] (a symlink such as kube-apiserver) or, when
// invoked as itself, by its first argument: `kube kubectl get pods`.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	_ "time/tzdata" // CronJob time zone support, as in the upstream mains

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"

	_ "k8s.io/client-go/plugin/pkg/client/auth" // kubectl auth plugins

	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

var servers = map[string]func() *cobra.Command{
	"kube-apiserver":          func() *cobra.Command { return apiserver.NewAPIServerCommand() },
	"kube-controller-manager": func() *cobra.Command { return controllermanager.NewControllerManagerCommand() },
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
}

func main() {
	name := filepath.Base(os.Args[0])
	if _, ok := servers[name]; !ok && name != "kubectl" && len(os.Args) > 1 {
		// Invoked as the multi-call binary itself: the program is the first argument, and
		// the programs parse os.Args themselves, so drop the binary's own name.
		os.Args = os.Args[1:]
		name = os.Args[0]
	}
	if name == "kubectl" {
		runKubectl()
		return
	}
	newCommand, ok := servers[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "unknown program %q; one of: %s\n", name, strings.Join(programs(), ", "))
		os.Exit(2)
	}
	os.Exit(cli.Run(newCommand()))
}

// runKubectl mirrors k8s.io/kubernetes/cmd/kubectl: verbosity is set before the command is
// built so that plugin lookup and kuberc parsing already log at the requested level.
func runKubectl() {
	logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args)) // nolint:errcheck
	command := kubectlcmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		kubectlutil.CheckErr(err)
	}
}

func programs() []string {
	names := []string{"kubectl"}
	for name := range servers {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}
