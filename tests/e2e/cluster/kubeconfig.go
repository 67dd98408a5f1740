package main

// Kubeconfig files and the ready file that tell test fixtures where the cluster is.

import (
	"encoding/json"
	"os"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

func writeTokenKubeconfig(path, server, caFile, user, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["local"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: caFile}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["local"] = &clientcmdapi.Context{Cluster: "local", AuthInfo: user, Namespace: "default"}
	cfg.CurrentContext = "local"
	return clientcmd.WriteToFile(*cfg, path)
}

// readyInfo is the content of <data-dir>/ready.json, written once everything is up (see README).
type readyInfo struct {
	PID                 int    `json:"pid"`
	APIServerURL        string `json:"apiserver_url"`
	AdminKubeconfig     string `json:"admin_kubeconfig"`
	SchedulerKubeconfig string `json:"scheduler_kubeconfig"`
	CACert              string `json:"ca_cert"`
	CAKey               string `json:"ca_key"`
	EtcdURL             string `json:"etcd_url"`
	SchedulerStatus     string `json:"scheduler_status"`
}

// writeJSONAtomic writes through a temporary file and rename so readers never see a partial file.
func writeJSONAtomic(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
