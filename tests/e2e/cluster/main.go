// Command localcluster runs a real Kubernetes control plane for end-to-end tests on one machine without
// containers: embedded etcd, kube-apiserver and kube-scheduler (plus the service-account controller) in one
// process, all on 127.0.0.1, state under --data-dir. See ../README.md for the files it writes and the signals it
// understands (SIGTERM/SIGINT: clean shutdown; SIGHUP: restart kube-scheduler from its config file).
package main

import (
	"context"
	goflag "flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/cmd/kube-controller-manager/names"
)

type options struct {
	dataDir         string
	apiserverPort   int
	address         string
	schedulerConfig string
	startScheduler  bool
	exitWithParent  bool
	verbosity       int
	readyTimeout    time.Duration
	controllers     map[string]bool
}

func parseOptions(args []string) (*options, error) {
	o := &options{}
	var err error
	fs := goflag.NewFlagSet("localcluster", goflag.ContinueOnError)
	fs.StringVar(&o.dataDir, "data-dir", "", "directory for etcd data, keys, kubeconfigs and status files (required)")
	fs.IntVar(&o.apiserverPort, "apiserver-port", 0, "kube-apiserver port on --address; 0 picks a free one")
	fs.StringVar(&o.address, "address", "127.0.0.1",
		"IPv4 address kube-apiserver listens on and advertises. A non-loopback one (the e2e run gives a /32 on lo "+
			"inside its network namespace) is written into the endpoints of the 'kubernetes' Service, so pods reach "+
			"the apiserver at its ClusterIP "+serviceIP+"; it must already be assigned to an interface")
	fs.StringVar(&o.schedulerConfig, "scheduler-config", "",
		"KubeSchedulerConfiguration file; empty = defaults. clientConnection.kubeconfig is filled in when empty, "+
			"leader election is always off. Re-read on SIGHUP")
	fs.BoolVar(&o.startScheduler, "scheduler", true, "start kube-scheduler at start-up (else only on the first SIGHUP)")
	fs.BoolVar(&o.exitWithParent, "exit-with-parent", true, "shut down when the parent process goes away")
	fs.IntVar(&o.verbosity, "v", 0, "klog verbosity for all components")
	fs.DurationVar(&o.readyTimeout, "ready-timeout", 3*time.Minute, "give up if the control plane is not ready by then")
	controllers := fs.String("controllers", "*",
		"controllers to run, kube-controller-manager style: '*' = all of "+controllerList()+
			"; 'name' adds one, '-name' removes one (e.g. '*,-garbagecollector')")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if o.controllers, err = parseControllers(*controllers); err != nil {
		return nil, fmt.Errorf("--controllers: %w", err)
	}
	if o.dataDir == "" {
		return nil, fmt.Errorf("--data-dir is required: give a writable directory for the cluster's state")
	}
	if ip := net.ParseIP(o.address); ip == nil || ip.To4() == nil {
		return nil, fmt.Errorf("--address %q: not an IPv4 address", o.address)
	}
	if fs.NArg() != 0 {
		return nil, fmt.Errorf("unexpected arguments %q: every setting is a --flag", fs.Args())
	}
	if o.schedulerConfig != "" {
		if _, err := os.Stat(o.schedulerConfig); err != nil {
			return nil, fmt.Errorf("--scheduler-config: %w", err)
		}
	}
	return o, nil
}

func main() {
	o, err := parseOptions(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "localcluster:", err)
		os.Exit(2)
	}
	klogFlags := goflag.NewFlagSet("klog", goflag.ContinueOnError)
	klog.InitFlags(klogFlags)
	_ = klogFlags.Set("v", strconv.Itoa(o.verbosity))
	if err := run(o); err != nil {
		klog.Flush()
		fmt.Fprintln(os.Stderr, "localcluster:", err)
		os.Exit(1)
	}
	klog.Flush()
}

func run(o *options) error {
	dataDir, err := filepath.Abs(o.dataDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	readyFile := filepath.Join(dataDir, "ready.json")
	_ = os.Remove(readyFile)

	// Signals are caught from the start so a SIGTERM during start-up still shuts down cleanly.
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if o.exitWithParent {
		go watchParent(ctx, os.Getppid(), signals)
	}

	p, err := generatePKI(filepath.Join(dataDir, "pki"), net.ParseIP(o.address))
	if err != nil {
		return fmt.Errorf("generate keys: %w", err)
	}

	etcd, etcdURL, err := startEtcd(filepath.Join(dataDir, "etcd"))
	if err != nil {
		return err
	}
	defer etcd.Close()

	listenAddr := net.JoinHostPort(o.address, strconv.Itoa(o.apiserverPort))
	listener, err := net.Listen("tcp", listenAddr)
	if err != nil {
		return fmt.Errorf("listen for kube-apiserver on %s: %w", listenAddr, err)
	}
	serverURL := "https://" + net.JoinHostPort(o.address, strconv.Itoa(listener.Addr().(*net.TCPAddr).Port))

	apiCtx, apiCancel := context.WithCancel(ctx)
	defer apiCancel()
	apiDone, err := startAPIServer(apiCtx, listener, apiserverFlags(etcdURL, p, filepath.Join(dataDir, "pki"), o.address))
	if err != nil {
		return err
	}
	// Ordered shutdown: scheduler and controllers first (deferred below), then the apiserver, then etcd.
	defer func() {
		apiCancel()
		select {
		case <-apiDone:
		case <-time.After(30 * time.Second):
			klog.Warning("kube-apiserver did not stop within 30s")
		}
	}()

	adminKubeconfig := filepath.Join(dataDir, "admin.kubeconfig")
	schedulerKubeconfig := filepath.Join(dataDir, "scheduler.kubeconfig")
	if err := writeTokenKubeconfig(adminKubeconfig, serverURL, p.CACert, "admin", p.AdminToken); err != nil {
		return err
	}
	if err := writeTokenKubeconfig(schedulerKubeconfig, serverURL, p.CACert, "system:kube-scheduler",
		p.SchedulerToken); err != nil {
		return err
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", adminKubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return err
	}

	// kube-apiserver's post-start hooks end the process (klog.Fatal, exit 255) when its context is cancelled before
	// they finish. So a first SIGTERM/SIGINT during start-up only marks the stop, which happens in order once
	// start-up is complete (seconds); a second one exits at once.
	var stopRequested atomic.Bool
	startDone := make(chan struct{})
	go func() {
		for {
			select {
			case sig := <-signals:
				if sig == syscall.SIGHUP {
					continue
				}
				if stopRequested.Swap(true) {
					fmt.Fprintln(os.Stderr, "localcluster: second signal during start-up, exiting now")
					os.Exit(1)
				}
			case <-startDone:
				return
			}
		}
	}()
	startCtx, startCancel := context.WithTimeout(ctx, o.readyTimeout)
	defer startCancel()
	if err := waitAPIServerReady(startCtx, client, apiDone, o.readyTimeout); err != nil {
		return err
	}

	ctrlCtx, ctrlCancel := context.WithCancel(ctx)
	defer ctrlCancel()
	if err := startControllers(ctrlCtx, restCfg, client, p.CACert, o.controllers); err != nil {
		return err
	}
	if o.controllers[names.ServiceAccountController] {
		if err := waitServiceAccount(startCtx, client, "default", o.readyTimeout); err != nil {
			return err
		}
	}

	scheduler := newSchedulerSupervisor(dataDir, o.schedulerConfig, schedulerKubeconfig)
	defer scheduler.stop()
	schedulerStatus := "not started (send SIGHUP to start)"
	if o.startScheduler {
		if err := scheduler.restart(ctx); err != nil {
			return err
		}
		schedulerStatus = "running"
	}
	startCancel()
	close(startDone)
	if stopRequested.Load() {
		fmt.Println("localcluster: stop requested during start-up, stopping")
		return nil
	}

	if err := writeJSONAtomic(readyFile, readyInfo{
		PID: os.Getpid(), APIServerURL: serverURL, AdminKubeconfig: adminKubeconfig,
		SchedulerKubeconfig: schedulerKubeconfig, CACert: p.CACert, CAKey: p.CAKey, EtcdURL: etcdURL,
		SchedulerStatus: schedulerStatus,
	}); err != nil {
		return err
	}
	defer os.Remove(readyFile)
	fmt.Printf("localcluster: ready %s (kubeconfig %s)\n", serverURL, adminKubeconfig)

	for {
		select {
		case <-ctx.Done():
			fmt.Println("localcluster: stopping")
			return nil
		case err := <-apiDone:
			return fmt.Errorf("kube-apiserver stopped unexpectedly: %v", err)
		case err := <-etcd.Err():
			return fmt.Errorf("embedded etcd failed: %v", err)
		case sig := <-signals:
			if sig != syscall.SIGHUP {
				fmt.Printf("localcluster: %s, stopping\n", sig)
				return nil
			}
			if err := scheduler.restart(ctx); err != nil {
				// Reported in scheduler.json; the control plane stays up so the test can fix the config.
				klog.ErrorS(err, "kube-scheduler restart failed")
			} else {
				fmt.Println("localcluster: kube-scheduler restarted")
			}
		}
	}
}

// watchParent turns the disappearance of the parent (a crashed or killed test run) into a SIGTERM, so a
// control plane is never left running on its own.
func watchParent(ctx context.Context, parent int, signals chan<- os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		if os.Getppid() != parent {
			signals <- syscall.SIGTERM
			return
		}
	}
}
