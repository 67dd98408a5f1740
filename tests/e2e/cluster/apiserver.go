package main

// kube-apiserver run in-process through its options API (no cobra command, so no process-wide signal handler):
// on --address (loopback unless the e2e run gives it a routable one), RBAC + Node authorization, the default admission chain (MutatingAdmissionWebhook included)
// plus NodeRestriction, service-account tokens signed with a key generated at start-up.

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	apiserveroptions "k8s.io/kubernetes/cmd/kube-apiserver/app/options"
)

const (
	serviceCIDR = "10.0.0.0/24"
	serviceIP   = "10.0.0.1"
)

// apiserverFlags are the kube-apiserver command-line flags this harness runs with; see README for why each
// deviates from the defaults.
func apiserverFlags(etcdURL string, p *pkiFiles, dataDir, address string) []string {
	// A loopback advertise address cannot be written into the kubernetes Endpoints (validation refuses it): then
	// nothing is (in-cluster clients cannot reach such an apiserver anyway). A routable one is reconciled there
	// (the "lease" reconciler, kube-apiserver's default), so the kubernetes Service's ClusterIP leads to it.
	reconciler := "lease"
	if net.ParseIP(address).IsLoopback() {
		reconciler = "none"
	}
	return []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=" + address,
		// Without it a loopback bind makes the apiserver look for a host interface with a default route.
		"--advertise-address=" + address,
		"--endpoint-reconciler-type=" + reconciler,
		"--cert-dir=" + dataDir,
		"--tls-cert-file=" + p.ServingCert,
		"--tls-private-key-file=" + p.ServingKey,
		"--client-ca-file=" + p.CACert,
		"--token-auth-file=" + p.TokenFile,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		// Nothing (no node-lifecycle controller) would ever remove the not-ready taint this plugin puts on new Nodes.
		"--disable-admission-plugins=TaintNodesByCondition",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.ServiceAccountKey,
		"--service-account-signing-key-file=" + p.ServiceAccountKey,
		"--service-cluster-ip-range=" + serviceCIDR,
		"--allow-privileged=true",
		// kubectl logs/exec reach a real kubelet at its Node's InternalIP: never resolve the Hostname address by DNS.
		"--kubelet-preferred-address-types=InternalIP",
		"--profiling=false",
	}
}

// startAPIServer completes and validates the options, then runs the server until ctx ends. The returned channel
// yields Run's result once (nil after a clean shutdown).
func startAPIServer(ctx context.Context, listener net.Listener, flags []string) (<-chan error, error) {
	s := apiserveroptions.NewServerRunOptions()
	fs := pflag.NewFlagSet("kube-apiserver", pflag.ContinueOnError)
	for _, f := range s.Flags().FlagSets {
		fs.AddFlagSet(f)
	}
	if err := fs.Parse(flags); err != nil {
		return nil, fmt.Errorf("kube-apiserver flags: %w", err)
	}
	s.SecureServing.Listener = listener
	s.SecureServing.BindPort = listener.Addr().(*net.TCPAddr).Port
	if err := s.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return nil, fmt.Errorf("kube-apiserver feature gates: %w", err)
	}
	rest.SetDefaultWarningHandler(rest.NoWarnings{})
	completed, err := s.Complete(ctx)
	if err != nil {
		return nil, fmt.Errorf("kube-apiserver options: %w", err)
	}
	if errs := completed.Validate(); len(errs) != 0 {
		return nil, fmt.Errorf("kube-apiserver options: %w", utilerrors.NewAggregate(errs))
	}
	done := make(chan error, 1)
	go func() { done <- apiserverapp.Run(ctx, completed) }()
	return done, nil
}

// waitAPIServerReady polls /readyz and then waits for the default namespace, like the upstream test server.
func waitAPIServerReady(ctx context.Context, client kubernetes.Interface, runErr <-chan error, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case err := <-runErr:
			return fmt.Errorf("kube-apiserver exited during start-up: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			last = fmt.Errorf("/readyz: %v: %s", err, body)
			continue
		}
		if _, err := client.CoreV1().Namespaces().Get(ctx, metav1.NamespaceDefault, metav1.GetOptions{}); err != nil {
			last = fmt.Errorf("namespace default: %v", err)
			continue
		}
		return nil
	}
	return fmt.Errorf("kube-apiserver not ready after %s: %v", timeout, last)
}

// waitServiceAccount waits until the service-account controller has created <namespace>/default, without which
// the ServiceAccount admission plugin rejects pods.
func waitServiceAccount(ctx context.Context, client kubernetes.Interface, namespace string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		_, err := client.CoreV1().ServiceAccounts(namespace).Get(ctx, "default", metav1.GetOptions{})
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("service account %s/default not created after %s: %v", namespace, timeout, last)
}
