package main

// kube-scheduler run in-process (app.Setup + app.Run), restartable: SIGHUP stops the running scheduler and starts
// a new one from the (re-read) configuration file, so a test can point it at an extender whose URL is known only
// at test time. Status goes to <data-dir>/scheduler.json after every (re)start.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"k8s.io/component-base/configz"
	"k8s.io/klog/v2"
	schedulerapp "k8s.io/kubernetes/cmd/kube-scheduler/app"
	scheduleroptions "k8s.io/kubernetes/cmd/kube-scheduler/app/options"
	"sigs.k8s.io/yaml"
)

const defaultSchedulerConfig = `apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
`

// schedulerStatus is the content of <data-dir>/scheduler.json.
type schedulerStatus struct {
	Generation      int    `json:"generation"`
	Running         bool   `json:"running"`
	ConfigFile      string `json:"config_file"`
	EffectiveConfig string `json:"effective_config"`
	Error           string `json:"error"`
}

type schedulerSupervisor struct {
	configFile    string // as given by --scheduler-config; "" means the default configuration
	effectiveFile string // what the scheduler actually reads
	statusFile    string
	kubeconfig    string

	mu         sync.Mutex
	generation int
	cancel     context.CancelFunc
	done       chan struct{}
}

func newSchedulerSupervisor(dataDir, configFile, kubeconfig string) *schedulerSupervisor {
	return &schedulerSupervisor{
		configFile:    configFile,
		effectiveFile: filepath.Join(dataDir, "scheduler-config.effective.yaml"),
		statusFile:    filepath.Join(dataDir, "scheduler.json"),
		kubeconfig:    kubeconfig,
	}
}

// effectiveConfig fills in what only this program knows: the kubeconfig the scheduler must use (unless the file
// names one) and leader election off (with it on, stopping the scheduler calls os.Exit).
func (s *schedulerSupervisor) effectiveConfig() ([]byte, error) {
	raw := []byte(defaultSchedulerConfig)
	if s.configFile != "" {
		var err error
		if raw, err = os.ReadFile(s.configFile); err != nil {
			return nil, fmt.Errorf("read --scheduler-config: %w", err)
		}
	}
	doc := map[string]any{}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("--scheduler-config %s is not valid YAML: %w", s.configFile, err)
	}
	if doc == nil {
		doc = map[string]any{}
	}
	cc, _ := doc["clientConnection"].(map[string]any)
	if cc == nil {
		cc = map[string]any{}
	}
	if k, _ := cc["kubeconfig"].(string); k == "" {
		cc["kubeconfig"] = s.kubeconfig
	}
	doc["clientConnection"] = cc
	le, _ := doc["leaderElection"].(map[string]any)
	if le == nil {
		le = map[string]any{}
	}
	le["leaderElect"] = false
	doc["leaderElection"] = le
	return yaml.Marshal(doc)
}

func (s *schedulerSupervisor) stopLocked() {
	if s.cancel == nil {
		return
	}
	s.cancel()
	<-s.done
	s.cancel, s.done = nil, nil
	// A second Run in the same process would otherwise fail: "register config componentconfig twice".
	configz.Delete("componentconfig")
}

func (s *schedulerSupervisor) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
}

// restart stops the running scheduler (if any) and starts a new one; it returns once the new scheduler's
// informers and event handlers have synced, so pods created afterwards are seen by it.
func (s *schedulerSupervisor) restart(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
	s.generation++
	status := schedulerStatus{Generation: s.generation, ConfigFile: s.configFile, EffectiveConfig: s.effectiveFile}
	err := s.startLocked(ctx)
	if err != nil {
		status.Error = err.Error()
	} else {
		status.Running = true
	}
	if werr := writeJSONAtomic(s.statusFile, status); werr != nil && err == nil {
		err = werr
	}
	return err
}

func (s *schedulerSupervisor) startLocked(ctx context.Context) error {
	cfg, err := s.effectiveConfig()
	if err != nil {
		return err
	}
	if err := os.WriteFile(s.effectiveFile, cfg, 0o644); err != nil {
		return err
	}
	opts := scheduleroptions.NewOptions()
	opts.ConfigFile = s.effectiveFile
	// 0 turns off the scheduler's own HTTPS endpoint (healthz/metrics): nothing here scrapes it.
	opts.SecureServing.BindPort = 0
	sctx, cancel := context.WithCancel(ctx)
	cc, sched, err := schedulerapp.Setup(sctx, opts)
	if err != nil {
		cancel()
		return fmt.Errorf("kube-scheduler set-up: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Run returns "finished without leader elect" when sctx ends: that is the normal way out.
		if err := schedulerapp.Run(sctx, cc, sched); err != nil && sctx.Err() == nil {
			klog.ErrorS(err, "kube-scheduler stopped unexpectedly")
		}
	}()
	s.cancel, s.done = cancel, done
	syncCtx, syncCancel := context.WithTimeout(sctx, 60*time.Second)
	defer syncCancel()
	if err := sched.WaitForHandlersSync(syncCtx); err != nil {
		return fmt.Errorf("kube-scheduler did not sync its caches: %w", err)
	}
	return nil
}
