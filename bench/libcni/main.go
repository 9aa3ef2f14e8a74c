// Command cni-libcni-bench calls CNI plugins through libcni, the library container runtimes
// link (containerd's go-cni, CRI-O's ocicni and podman's CNI backend all end in
// AddNetworkList and DelNetworkList), and reports how long each call took and the peak RSS
// of every plugin process libcni started. tests/bench.py drives it; it is not a runtime.
//
// It loads one network list and serves requests, one JSON object per line on stdin, one
// answer per line on stdout:
//
//	{"op":"add","containerID":"c1","netns":"/run/netns/x","ifName":"eth0","hostPort":8080}
//	{"op":"del","containerID":"c1","netns":"/run/netns/x","ifName":"eth0","hostPort":8080}
//	{"op":"spawn","argv":["/usr/bin/python3","-I","-S","-c","pass"],"env":["A=b"],"stdin":""}
//	{"op":"spin","iterations":1000000}
//
// and answers {"seconds":…,"error":"…","calls":[{"plugin":…,"command":…,"seconds":…,"maxRSSKiB":…}]}.
// The process stays up between requests, as a runtime does, so its own start-up is never timed.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// A call libcni made: one plugin process, from fork to wait4.
type pluginCall struct {
	Plugin    string  `json:"plugin"`
	Command   string  `json:"command"`
	Seconds   float64 `json:"seconds"`
	MaxRSSKiB int64   `json:"maxRSSKiB"`
}

// measuredExec is libcni's invoke.Exec doing what invoke.RawExec does (os/exec, the
// environment libcni built, the config on stdin, a CNI error parsed from stdout), except
// that it keeps each child's rusage. wait4 reports ru_maxrss as the larger of the child's own
// peak and that of any process the child waited for (host-local under the reference bridge,
// iptables-restore under cni-bridge), so the figure is the biggest process of the plugin's
// tree, never the Go client. RawExec's retry on "text file busy" is left out: nothing here
// rewrites a plugin while it runs.
type measuredExec struct {
	version.PluginDecoder
	calls []pluginCall
}

func (e *measuredExec) ExecPlugin(ctx context.Context, pluginPath string, stdinData []byte, environ []string) ([]byte, error) {
	call, stdout, stderr, err := runMeasured(ctx, []string{pluginPath}, environ, stdinData)
	call.Command = cniCommand(environ)
	e.calls = append(e.calls, call)
	if err != nil {
		return nil, pluginError(err, stdout, stderr)
	}
	return stdout, nil
}

func (e *measuredExec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

func runMeasured(ctx context.Context, argv []string, environ []string, stdin []byte) (pluginCall, []byte, []byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = environ
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	call := pluginCall{Plugin: filepath.Base(argv[0]), Seconds: time.Since(start).Seconds()}
	if cmd.ProcessState != nil {
		if usage, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			call.MaxRSSKiB = usage.Maxrss // KiB on Linux
		}
	}
	return call, stdout.Bytes(), stderr.Bytes(), err
}

func cniCommand(environ []string) string {
	for _, kv := range environ {
		if strings.HasPrefix(kv, "CNI_COMMAND=") {
			return strings.TrimPrefix(kv, "CNI_COMMAND=")
		}
	}
	return ""
}

// pluginError turns a failed plugin into the error libcni's RawExec would return.
func pluginError(err error, stdout, stderr []byte) error {
	cniErr := types.Error{}
	switch {
	case len(stdout) > 0 && json.Unmarshal(stdout, &cniErr) == nil:
	case len(stdout) > 0:
		cniErr.Msg = fmt.Sprintf("netplugin failed with unparsable output %q: %v", stdout, err)
	case len(stderr) > 0:
		cniErr.Msg = fmt.Sprintf("netplugin failed: %q", stderr)
	default:
		cniErr.Msg = fmt.Sprintf("netplugin failed with no error message: %v", err)
	}
	return &cniErr
}

type request struct {
	Op          string   `json:"op"`
	ContainerID string   `json:"containerID"`
	NetNS       string   `json:"netns"`
	IfName      string   `json:"ifName"`
	HostPort    int      `json:"hostPort"`
	PortKeys    string   `json:"portKeys"` // "lowercase" (cnitool, CRI-O, podman) or "containerd" (go-cni)
	Argv        []string `json:"argv"`
	Env         []string `json:"env"`
	Stdin       string   `json:"stdin"`
	Iterations  int      `json:"iterations"`
}

type answer struct {
	Seconds float64         `json:"seconds"`
	Error   string          `json:"error,omitempty"`
	Calls   []pluginCall    `json:"calls,omitempty"`
	Result  json.RawMessage `json:"result,omitempty"`
}

// The published port as runtimes hand it to libcni in CapabilityArgs.
type portMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP"`
}

// go-cni's PortMapping has no JSON tags, so containerd sends capitalised keys.
type containerdPortMapping struct {
	HostPort      int32
	ContainerPort int32
	Protocol      string
	HostIP        string
}

const containerPort = 80

func runtimeConf(req *request) *libcni.RuntimeConf {
	var ports interface{} = []portMapping{{HostPort: req.HostPort, ContainerPort: containerPort, Protocol: "tcp"}}
	if req.PortKeys == "containerd" {
		ports = []containerdPortMapping{{HostPort: int32(req.HostPort), ContainerPort: containerPort, Protocol: "tcp"}}
	}
	return &libcni.RuntimeConf{
		ContainerID: req.ContainerID,
		NetNS:       req.NetNS,
		IfName:      req.IfName,
		// What containerd's CRI plugin passes, so CNI_ARGS parsing is part of the cost.
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", "bench"},
			{"K8S_POD_NAME", req.ContainerID},
			{"K8S_POD_INFRA_CONTAINER_ID", req.ContainerID},
		},
		CapabilityArgs: map[string]interface{}{"portMappings": ports},
	}
}

type client struct {
	cni  *libcni.CNIConfig
	exec *measuredExec
	list *libcni.NetworkConfigList
}

const requestTimeout = 5 * time.Minute

func (c *client) serve(req *request) answer {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	c.exec.calls = nil
	var ans answer
	var err error
	start := time.Now()
	switch req.Op {
	case "add":
		var result types.Result
		result, err = c.cni.AddNetworkList(ctx, c.list, runtimeConf(req))
		ans.Seconds = time.Since(start).Seconds()
		if err == nil {
			ans.Result, err = json.Marshal(result)
		}
	case "del":
		err = c.cni.DelNetworkList(ctx, c.list, runtimeConf(req))
		ans.Seconds = time.Since(start).Seconds()
	case "spawn":
		var call pluginCall
		var stdout, stderr []byte
		call, stdout, stderr, err = runMeasured(ctx, req.Argv, req.Env, []byte(req.Stdin))
		ans.Seconds = call.Seconds
		c.exec.calls = []pluginCall{call}
		if err != nil {
			err = fmt.Errorf("%v: %s %s", err, stdout, stderr)
		}
	case "spin":
		ans.Seconds = spin(req.Iterations)
	default:
		err = fmt.Errorf("unknown op %q", req.Op)
	}
	ans.Calls = c.exec.calls
	if err != nil {
		ans.Error = err.Error()
	}
	return ans
}

// spin is fixed CPU work: how long it takes from one request to the next shows the
// machine's noise (other load, frequency changes, steal time), apart from any plugin.
func spin(iterations int) float64 {
	start := time.Now()
	x := uint64(88172645463325252)
	for i := 0; i < iterations; i++ {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
	}
	spinSink = x
	return time.Since(start).Seconds()
}

var spinSink uint64

func main() {
	conflist := flag.String("conflist", "", "network list file (a .conflist)")
	cacheDir := flag.String("cache", "", "libcni's result cache directory (a runtime's /var/lib/cni)")
	pluginPath := flag.String("path", "/usr/lib/cni", "plugin directories, colon-separated")
	flag.Parse()
	if *conflist == "" || *cacheDir == "" {
		fmt.Fprintln(os.Stderr, "usage: cni-libcni-bench -conflist FILE -cache DIR [-path DIR:DIR]")
		os.Exit(2)
	}
	list, err := libcni.ConfListFromFile(*conflist)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	measured := &measuredExec{}
	c := &client{
		cni:  libcni.NewCNIConfigWithCacheDir(filepath.SplitList(*pluginPath), *cacheDir, measured),
		exec: measured,
		list: list,
	}
	if err := c.loop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func (c *client) loop() error {
	lines := bufio.NewScanner(os.Stdin)
	lines.Buffer(make([]byte, 1<<20), 1<<20)
	out := json.NewEncoder(os.Stdout)
	for lines.Scan() {
		var req request
		ans := answer{}
		if err := json.Unmarshal(lines.Bytes(), &req); err != nil {
			ans.Error = fmt.Sprintf("bad request: %v", err)
		} else {
			ans = c.serve(&req)
		}
		if err := out.Encode(ans); err != nil {
			return err
		}
	}
	if err := lines.Err(); err != nil && !errors.Is(err, os.ErrClosed) {
		return err
	}
	return nil
}
