// Command node is the local cluster's real node: kubelet and kube-proxy from the same
// k8s.io/kubernetes module as the control plane, as one multi-call binary. It is separate from
// the control-plane binary because the kubelet links cAdvisor, whose global Go flags must not
// meet the control plane's. Run it through a symlink named after the component, or with the
// component as its first argument.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	_ "time/tzdata"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	if name == "node" && len(args) > 0 {
		name, args = args[0], args[1:]
	}
	os.Args = append([]string{name}, args...)
	switch name {
	case "kubelet":
		// cAdvisor finds containers through containerd at a Go flag (default
		// /run/containerd/containerd.sock) that the kubelet does not expose; without it the
		// memory series carry no pod or container labels.
		if endpoint := os.Getenv("CADVISOR_CONTAINERD_ENDPOINT"); endpoint != "" {
			if err := flag.Set("containerd", endpoint); err != nil {
				fmt.Fprintln(os.Stderr, "setting cAdvisor's containerd endpoint:", err)
				os.Exit(2)
			}
		}
		command := kubelet.NewKubeletCommand(context.Background())
		command.SetArgs(args)
		os.Exit(cli.Run(command))
	case "kube-proxy":
		command := proxy.NewProxyCommand()
		command.SetArgs(args)
		os.Exit(cli.Run(command))
	default:
		fmt.Fprintln(os.Stderr, "usage: node {kubelet|kube-proxy} [flags]")
		os.Exit(2)
	}
}
