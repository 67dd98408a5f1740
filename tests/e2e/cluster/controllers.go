package main

// The kube-controller-manager loops our deployed stack needs, run in this process: the upstream controllers of the
// same k8s.io/kubernetes module, built with their own constructors on one shared informer factory (as
// kube-controller-manager's ControllerContext does), not re-implementations. Each can be switched off with
// --controllers (kube-controller-manager's syntax and names):
//   - serviceaccount: the "default" ServiceAccount in every namespace (the ServiceAccount admission plugin rejects
//     pods in a namespace without it);
//   - root-ca-cert-publisher: the "kube-root-ca.crt" ConfigMap in every namespace, which a real kubelet mounts into
//     every pod's projected kube-api-access volume (without it such pods hang in ContainerCreating);
//   - deployment, replicaset, daemonset: the webhook and scheduler Deployments, the device-plugin and lib-installer
//     DaemonSets;
//   - endpointslice: what kube-proxy routes a Service's ClusterIP to; endpoint: the legacy Endpoints, for clients
//     that still read them;
//   - garbagecollector: ownerReferences (a Deployment's ReplicaSets and their pods go with it);
//   - disruption: PodDisruptionBudget status, which the eviction API checks;
//   - namespace: deleting a namespace deletes its content (finalizer "kubernetes").
// They all use the admin client: kube-controller-manager's per-controller ServiceAccounts add nothing to a test
// control plane whose every client is ours.

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
	cacheddiscovery "k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/scale"
	"k8s.io/client-go/util/flowcontrol"
	"k8s.io/controller-manager/pkg/informerfactory"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/cmd/kube-controller-manager/names"
	"k8s.io/kubernetes/pkg/controller/certificates/rootcacertpublisher"
	"k8s.io/kubernetes/pkg/controller/daemon"
	"k8s.io/kubernetes/pkg/controller/deployment"
	"k8s.io/kubernetes/pkg/controller/disruption"
	"k8s.io/kubernetes/pkg/controller/endpoint"
	"k8s.io/kubernetes/pkg/controller/endpointslice"
	"k8s.io/kubernetes/pkg/controller/garbagecollector"
	namespacecontroller "k8s.io/kubernetes/pkg/controller/namespace"
	"k8s.io/kubernetes/pkg/controller/replicaset"
	serviceaccountcontroller "k8s.io/kubernetes/pkg/controller/serviceaccount"
)

// controllerAliases maps kube-controller-manager's short names (its --controllers aliases) to its full names;
// both are accepted. The order is the start order.
var controllerAliases = []struct{ alias, name string }{
	{"serviceaccount", names.ServiceAccountController},
	{"root-ca-cert-publisher", names.RootCACertificatePublisherController},
	{"deployment", names.DeploymentController},
	{"replicaset", names.ReplicaSetController},
	{"daemonset", names.DaemonSetController},
	{"endpointslice", names.EndpointSliceController},
	{"endpoint", names.EndpointsController},
	{"garbagecollector", names.GarbageCollectorController},
	{"disruption", names.DisruptionController},
	{"namespace", names.NamespaceController},
}

// parseControllers reads a kube-controller-manager style list: "*" = every controller above, "name" turns one on,
// "-name" turns one off (later entries win). It returns the full names to start.
func parseControllers(spec string) (map[string]bool, error) {
	known := map[string]string{}
	for _, c := range controllerAliases {
		known[c.alias] = c.name
		known[c.name] = c.name
	}
	on := map[string]bool{}
	for _, item := range strings.Split(spec, ",") {
		item = strings.TrimSpace(item)
		switch {
		case item == "":
			continue
		case item == "*":
			for _, c := range controllerAliases {
				on[c.name] = true
			}
			continue
		}
		enable := !strings.HasPrefix(item, "-")
		name, ok := known[strings.TrimPrefix(item, "-")]
		if !ok {
			return nil, fmt.Errorf("unknown controller %q (known: %s, or their kube-controller-manager names)",
				item, controllerList())
		}
		on[name] = enable
	}
	return on, nil
}

// startControllers builds every enabled controller, starts the informers and runs each until ctx ends.
func startControllers(ctx context.Context, restCfg *rest.Config, client kubernetes.Interface, caCertFile string,
	enabled map[string]bool) error {
	factory := informers.NewSharedInformerFactory(client, 10*time.Minute)
	informersStarted := make(chan struct{})
	var runs []func()
	named := func(name string) context.Context {
		return klog.NewContext(ctx, klog.LoggerWithName(klog.FromContext(ctx), name))
	}

	// One discovery-backed REST mapper for the garbage collector and the disruption controller's scale client,
	// refreshed as kube-controller-manager refreshes its own (new CRDs become known).
	discoveryClient := discovery.NewDiscoveryClientForConfigOrDie(restCfg)
	restMapper := restmapper.NewDeferredDiscoveryRESTMapper(cacheddiscovery.NewMemCacheClient(discoveryClient))
	go wait.Until(restMapper.Reset, 30*time.Second, ctx.Done())

	if enabled[names.ServiceAccountController] {
		sa, err := serviceaccountcontroller.NewServiceAccountsController(
			factory.Core().V1().ServiceAccounts(), factory.Core().V1().Namespaces(), client,
			serviceaccountcontroller.DefaultServiceAccountsControllerOptions())
		if err != nil {
			return fmt.Errorf("%s: %w", names.ServiceAccountController, err)
		}
		c := named(names.ServiceAccountController)
		runs = append(runs, func() { sa.Run(c, 1) })
	}
	if enabled[names.RootCACertificatePublisherController] {
		caPEM, err := os.ReadFile(caCertFile)
		if err != nil {
			return fmt.Errorf("%s: %w", names.RootCACertificatePublisherController, err)
		}
		publisher, err := rootcacertpublisher.NewPublisher(
			factory.Core().V1().ConfigMaps(), factory.Core().V1().Namespaces(), client, caPEM)
		if err != nil {
			return fmt.Errorf("%s: %w", names.RootCACertificatePublisherController, err)
		}
		c := named(names.RootCACertificatePublisherController)
		runs = append(runs, func() { publisher.Run(c, 1) })
	}
	if enabled[names.DeploymentController] {
		c := named(names.DeploymentController)
		dc, err := deployment.NewDeploymentController(c, factory.Apps().V1().Deployments(),
			factory.Apps().V1().ReplicaSets(), factory.Core().V1().Pods(), client)
		if err != nil {
			return fmt.Errorf("%s: %w", names.DeploymentController, err)
		}
		runs = append(runs, func() { dc.Run(c, 2) })
	}
	if enabled[names.ReplicaSetController] {
		c := named(names.ReplicaSetController)
		// 500: kube-controller-manager's default burst of pod creations per sync.
		rs := replicaset.NewReplicaSetController(c, factory.Apps().V1().ReplicaSets(), factory.Core().V1().Pods(),
			client, replicaset.BurstReplicas)
		runs = append(runs, func() { rs.Run(c, 2) })
	}
	if enabled[names.DaemonSetController] {
		c := named(names.DaemonSetController)
		// kube-controller-manager's back-off for failed daemon pods: 1 s doubling up to 15 min.
		ds, err := daemon.NewDaemonSetsController(c, factory.Apps().V1().DaemonSets(),
			factory.Apps().V1().ControllerRevisions(), factory.Core().V1().Pods(), factory.Core().V1().Nodes(),
			client, flowcontrol.NewBackOff(time.Second, 15*time.Minute))
		if err != nil {
			return fmt.Errorf("%s: %w", names.DaemonSetController, err)
		}
		runs = append(runs, func() { ds.Run(c, 2) })
	}
	if enabled[names.EndpointSliceController] {
		c := named(names.EndpointSliceController)
		// 100 endpoints per slice and no batching: kube-controller-manager's defaults.
		es := endpointslice.NewController(c, factory.Core().V1().Pods(), factory.Core().V1().Services(),
			factory.Core().V1().Nodes(), factory.Discovery().V1().EndpointSlices(), 100, client, 0)
		runs = append(runs, func() { es.Run(c, 2) })
	}
	if enabled[names.EndpointsController] {
		c := named(names.EndpointsController)
		ep := endpoint.NewEndpointController(c, factory.Core().V1().Pods(), factory.Core().V1().Services(),
			factory.Core().V1().Endpoints(), client, 0)
		runs = append(runs, func() { ep.Run(c, 2) })
	}

	metadataClient, err := metadata.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	if enabled[names.GarbageCollectorController] {
		c := named(names.GarbageCollectorController)
		// Typed informers where the factory has them (shared with the controllers above), metadata-only ones for
		// every other resource, as kube-controller-manager does.
		metadataInformers := metadatainformer.NewSharedInformerFactory(metadataClient, 10*time.Minute)
		gc, err := garbagecollector.NewGarbageCollector(c, client, metadataClient, restMapper,
			garbagecollector.DefaultIgnoredResources(),
			informerfactory.NewInformerFactory(factory, metadataInformers), informersStarted)
		if err != nil {
			return fmt.Errorf("%s: %w", names.GarbageCollectorController, err)
		}
		runs = append(runs, func() {
			metadataInformers.Start(ctx.Done())
			// 30 s: kube-controller-manager's initial sync timeout and discovery re-sync period.
			go gc.Sync(c, discoveryClient, 30*time.Second)
			gc.Run(c, 4, 30*time.Second)
		})
	}
	if enabled[names.DisruptionController] {
		c := named(names.DisruptionController)
		scaleClient, err := scale.NewForConfig(restCfg, restMapper, dynamic.LegacyAPIPathResolverFunc,
			scale.NewDiscoveryScaleKindResolver(discoveryClient))
		if err != nil {
			return fmt.Errorf("%s: %w", names.DisruptionController, err)
		}
		dc := disruption.NewDisruptionController(c, factory.Core().V1().Pods(),
			factory.Policy().V1().PodDisruptionBudgets(), factory.Core().V1().ReplicationControllers(),
			factory.Apps().V1().ReplicaSets(), factory.Apps().V1().Deployments(), factory.Apps().V1().StatefulSets(),
			client, restMapper, scaleClient, discoveryClient)
		runs = append(runs, func() { dc.Run(c) })
	}
	if enabled[names.NamespaceController] {
		c := named(names.NamespaceController)
		nc := namespacecontroller.NewNamespaceController(c, client, metadataClient,
			client.Discovery().ServerPreferredNamespacedResources, factory.Core().V1().Namespaces(),
			5*time.Minute, v1.FinalizerKubernetes)
		runs = append(runs, func() { nc.Run(c, 2) })
	}

	for _, run := range runs {
		go run()
	}
	factory.Start(ctx.Done())
	close(informersStarted)
	return nil
}

// controllerList names the controllers --controllers knows, for its help text.
func controllerList() string {
	var all []string
	for _, c := range controllerAliases {
		all = append(all, c.alias)
	}
	return strings.Join(all, ", ")
}
