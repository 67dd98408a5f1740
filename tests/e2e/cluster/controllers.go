package main

// The kube-controller-manager loops a bare control plane cannot do without, the upstream controllers themselves,
// not re-implementations:
//   - the service-account controller creates the "default" ServiceAccount in every namespace (the ServiceAccount
//     admission plugin rejects pods in a namespace without it);
//   - the root-CA publisher writes the "kube-root-ca.crt" ConfigMap into every namespace: a real kubelet mounts it
//     into every pod's projected kube-api-access volume, and without it such pods hang in ContainerCreating.

import (
	"context"
	"fmt"
	"os"
	"time"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/kubernetes/pkg/controller/certificates/rootcacertpublisher"
	serviceaccountcontroller "k8s.io/kubernetes/pkg/controller/serviceaccount"
)

func startControllers(ctx context.Context, client kubernetes.Interface, caCertFile string) error {
	factory := informers.NewSharedInformerFactory(client, 10*time.Minute)
	sa, err := serviceaccountcontroller.NewServiceAccountsController(
		factory.Core().V1().ServiceAccounts(), factory.Core().V1().Namespaces(), client,
		serviceaccountcontroller.DefaultServiceAccountsControllerOptions())
	if err != nil {
		return fmt.Errorf("service-account controller: %w", err)
	}
	caPEM, err := os.ReadFile(caCertFile)
	if err != nil {
		return fmt.Errorf("root-ca-cert-publisher: %w", err)
	}
	publisher, err := rootcacertpublisher.NewPublisher(
		factory.Core().V1().ConfigMaps(), factory.Core().V1().Namespaces(), client, caPEM)
	if err != nil {
		return fmt.Errorf("root-ca-cert-publisher: %w", err)
	}
	factory.Start(ctx.Done())
	go sa.Run(ctx, 1)
	go publisher.Run(ctx, 1)
	return nil
}
