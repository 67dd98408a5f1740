package main

// The one kube-controller-manager loop a bare control plane cannot do without: the service-account controller,
// which creates the "default" ServiceAccount in every namespace (the ServiceAccount admission plugin rejects pods
// in a namespace without it). It is the upstream controller, not a re-implementation.

import (
	"context"
	"fmt"
	"time"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	serviceaccountcontroller "k8s.io/kubernetes/pkg/controller/serviceaccount"
)

func startControllers(ctx context.Context, client kubernetes.Interface) error {
	factory := informers.NewSharedInformerFactory(client, 10*time.Minute)
	sa, err := serviceaccountcontroller.NewServiceAccountsController(
		factory.Core().V1().ServiceAccounts(), factory.Core().V1().Namespaces(), client,
		serviceaccountcontroller.DefaultServiceAccountsControllerOptions())
	if err != nil {
		return fmt.Errorf("service-account controller: %w", err)
	}
	factory.Start(ctx.Done())
	go sa.Run(ctx, 1)
	return nil
}
