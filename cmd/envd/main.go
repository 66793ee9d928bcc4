// Command envd is the guest agent of a Firecracker sandbox: it serves the
// HTTP and Connect API on one port and, as PID 1, keeps the guest in order.
// This file only wires the pieces together; behaviour lives in internal/.
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"

	"github.com/envd/envd/gen/filesystem/filesystemconnect"
	"github.com/envd/envd/internal/api"
	"github.com/envd/envd/internal/auth"
	"github.com/envd/envd/internal/cgroups"
	"github.com/envd/envd/internal/config"
	"github.com/envd/envd/internal/defaults"
	"github.com/envd/envd/internal/freezer"
	"github.com/envd/envd/internal/fsfreeze"
	"github.com/envd/envd/internal/handover"
	"github.com/envd/envd/internal/hostinfo"
	"github.com/envd/envd/internal/hostinit"
	"github.com/envd/envd/internal/identity"
	"github.com/envd/envd/internal/keepalive"
	"github.com/envd/envd/internal/lifecycle"
	"github.com/envd/envd/internal/logging"
	"github.com/envd/envd/internal/memory"
	"github.com/envd/envd/internal/mmds"
	"github.com/envd/envd/internal/mountinfo"
	"github.com/envd/envd/internal/peer"
	"github.com/envd/envd/internal/ports"
	"github.com/envd/envd/internal/process"
	"github.com/envd/envd/internal/reaper"
	"github.com/envd/envd/internal/rpc"
	"github.com/envd/envd/internal/rpc/fsrpc"
	"github.com/envd/envd/internal/rpc/processrpc"
	"github.com/envd/envd/internal/runfiles"
	"github.com/envd/envd/internal/server"
	"github.com/envd/envd/internal/version"
	"github.com/envd/envd/internal/watch"
)

func main() {
	reopened := lifecycle.EnsureStdio()
	// Before anything can open or inherit a descriptor: an envd started by
	// a live upgrade takes stock of what it inherited (control-plane.md
	// §8.11).
	incoming := handover.Begin()
	pid1 := os.Getpid() == 1
	res := config.Parse(os.Args[1:], os.Stdout, os.Stderr,
		config.VersionText(version.Version, os.Getenv, handover.MaxSchema), version.Source(), pid1)
	if res.Action == config.Exit {
		os.Exit(res.ExitCode)
	}
	cfg := res.Config
	mmdsAddr, mmdsAddrOK := config.MMDSAddress(os.Getenv)
	testSettings := config.ReadTestSettings(os.Getenv)
	watcherIdle, watcherIdleOK := config.WatcherIdle(os.Getenv)
	execEnv := config.ExecEnvironment(os.Environ())
	config.ScrubEnvironment()

	// The gate lets /fsfreeze hold log output while stdout's filesystem is
	// frozen (internal/fsfreeze).
	output := logging.NewGate(os.Stdout)
	root := logging.New(output, logging.Options{JSON: !cfg.IsNotFC, Verbose: cfg.Verbose})
	log := logging.For(root, "envd")
	mode := "fc"
	if cfg.IsNotFC {
		mode = "notfc"
	}
	log.Info("envd starting", "version", version.Version, "commit", version.Source(), "port", cfg.Port, "mode", mode, "pid1", pid1)
	if res.Err != nil {
		log.Warn("command line not fully understood; continuing as PID 1", "error", res.Err.Error())
	}
	if len(cfg.Positional) > 0 {
		log.Info("ignoring positional arguments", "args", cfg.Positional)
	}
	if !mmdsAddrOK {
		log.Warn("invalid "+config.EnvMMDSAddress+"; using the default", "address", mmdsAddr)
	}
	if len(testSettings.Invalid) > 0 {
		log.Warn("invalid test-only settings ignored", "variables", testSettings.Invalid)
	}
	if !watcherIdleOK {
		log.Warn("invalid " + config.EnvWatcherIdle + "; using the default")
	}
	if len(reopened) > 0 {
		log.Warn("standard descriptors were closed; reopened them", "fds", reopened)
	}
	// Signals are routed, and children reaped, before anything is spawned;
	// children carried by a live upgrade are registered before the
	// reaper's first pass, so that no exit status is lost (§8.11 step 6).
	handoverLog := logging.For(root, "handover")
	incoming.Read(handoverLog)
	sigs := lifecycle.NewSignals(log)
	sigs.Start()
	reap := reaper.New(logging.For(root, "pid1"))
	incoming.RegisterChildren(reap)
	reap.Start()
	if pid1 {
		lifecycle.SetupPID1(logging.For(root, "pid1"))
	}
	// After the PID-1 mounts: started by the kernel as init, envd has no
	// /proc (for oom_score_adj) before them.
	lifecycle.ApplyProcessSettings(log)
	fileLimits, fileLimitsSet := lifecycle.RaiseFileLimit(log)
	if fileLimitsSet {
		reap.LimitChildren(fileLimits.Children)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	defaultUser := "root"
	if !identity.Privileged() {
		self := identity.Self()
		defaultUser = self.Name
		log.Warn("running unprivileged: requests act as this user only; chown, cgroups, clock and mounts are disabled", "user", self.Name)
	}
	env := defaults.New(defaultUser)
	env.SetInternal(defaults.SandboxVar, strconv.FormatBool(!cfg.IsNotFC))
	if err := runfiles.Write(runfiles.Dir, "."+defaults.SandboxVar, strconv.FormatBool(!cfg.IsNotFC), 0o444); err != nil {
		log.Warn("cannot publish sandbox flag", "error", err.Error())
	}

	token := &auth.Token{}
	gate := keepalive.NewGate()
	mmdsClient := mmds.NewClient(mmdsAddr)
	poller := mmds.NewPoller(mmdsClient, env, runfiles.Dir, logging.For(root, "mmds"))
	cgroupManager := cgroups.New(cgroups.Options{Root: cfg.CgroupRoot, Disabled: cfg.NoCgroups}, logging.For(root, "cgroups"))
	forwarder := ports.New(ports.Options{Disabled: cfg.IsNotFC}, logging.For(root, "port-forwarder"))
	cgroupFreezer := freezer.New(freezer.Options{
		Root:      cgroupManager.Root(),
		Cgroup2:   cgroupManager.Cgroup2(),
		NotFC:     cfg.IsNotFC,
		SpawnLock: reap.WithSpawnLock,
		Woken:     cgroupManager.Thawed,
		Watchdog:  testSettings.ThawWatchdog,
		Log:       logging.For(root, "freezer"),
	})
	rootFS := fsfreeze.New(fsfreeze.Options{
		Target:   testSettings.FSFreezeTarget,
		Disabled: cfg.IsNotFC,
		Watchdog: testSettings.FSFreezeWatchdog,
		Log:      logging.For(root, "fsfreeze"),
		Output:   output,
	})

	var snapshot *lifecycle.Snapshot
	initLog := logging.For(root, "init")
	hyperloop := hostinit.NewHyperloop("/etc/hosts", env, initLog)
	go hyperloop.Run(ctx)
	caInstaller := hostinit.NewCAInstaller(hostinit.SystemBundle, hostinit.LocalCA, initLog)
	deps := hostinit.Deps{
		Token:     token,
		Env:       env,
		Log:       initLog,
		FC:        !cfg.IsNotFC,
		Hyperloop: hyperloop,
		CA:        caInstaller,
		Volumes: hostinit.NewVolumes(func(ctx context.Context, argv []string) (int, []byte, error) {
			ws, out, err := reap.Run(ctx, argv, os.Environ())
			return ws.ExitStatus(), out, err
		}, mountinfo.Self),
		// snapshot is created with the server, below; /init runs only
		// once it is serving.
		Recover: func() {
			snapshot.RecoverIfNeeded()
			snapshot.EnsureResumed()
		},
		Audit: cgroupFreezer.AuditHeader,
		Thaw:  func() { cgroupFreezer.Thaw("init") },
	}
	if !cfg.IsNotFC {
		deps.ReadHash = func(ctx context.Context) string {
			md, err := mmdsClient.Fetch(ctx)
			if err != nil {
				return ""
			}
			return md.AccessTokenHash
		}
		deps.SetClock = hostinit.SetSystemClock
		deps.Repoll = poller.Repoll
	}
	initializer := hostinit.New(deps)
	mux := http.NewServeMux()
	httpLog := logging.For(root, "http")
	users := identity.NewCache(identity.SystemFiles)
	handlerOpts := api.Options{Token: token, Lookup: users.LookupUser, Version: version.Version, Log: httpLog,
		Gate: incoming.Gate(initializer.Initialized), Handover: incoming.Header}
	limits := server.ConnLimits{Caps: [2]int{server.Host: server.HostConns}}
	if !cfg.IsNotFC {
		limits.Caps[server.Guest] = server.GuestConns
		// Only in Firecracker mode is a peer inside the guest not the host.
		guest := &peer.Classifier{}
		handlerOpts.Guest = guest
		limits.Classify = func(c net.Conn) server.Class {
			if inside, _ := guest.InsideConn(c); inside {
				return server.Guest
			}
			return server.Host
		}
	}
	limits = limits.Fit(fileLimits.Envd.Cur)
	srv := server.New(cfg.Port, api.Handler(handlerOpts, mux), httpLog)
	srv.LimitConns(limits)

	snapshot = lifecycle.NewSnapshot(logging.For(root, "envd"),
		lifecycle.Part{Name: "ports", Suspend: forwarder.Stop, Resume: forwarder.Start},
		lifecycle.Part{Name: "mmds", Suspend: poller.Pause, Resume: poller.Resume},
		lifecycle.Part{Name: "keepalive", Suspend: gate.Suspend, Resume: gate.Resume},
		lifecycle.Part{Name: "connections", Suspend: srv.Tracker().Prepare, Resume: srv.Tracker().Restore},
	)

	metrics := hostinfo.NewSampler("/proc", "/")
	control := &api.Control{
		Version:  version.Version,
		Env:      env,
		Metrics:  metrics,
		Init:     initializer,
		Snapshot: snapshot,
		Log:      logging.For(root, "http"),
	}
	control.Register(mux)
	(&api.ControlPlane{Freezer: cgroupFreezer, FS: rootFS, Barrier: snapshot.Barrier, Log: logging.For(root, "http")}).Register(mux)

	fsLog := logging.For(root, "filesystem")
	watchers := watch.NewManager(fsLog, watch.Limits{IdleExpiry: watcherIdle})
	staging := handover.NewStaging()
	(&api.Files{Token: token, Env: env, Log: fsLog, Watchers: watchers, Staging: staging}).Register(mux)

	guard := rpc.NewGuard(rpc.GuardOptions{})
	rpcOpts := rpc.HandlerOptions(logging.For(root, "http"), guard)
	procs := process.New(process.Options{Spawner: reap, Defaults: env, Log: logging.For(root, "process"), Placement: cgroupManager, Users: users.Load})
	// The heap a burst of output grew is handed back once the last stream
	// ended (docs/performance.md, "Memory handed back").
	released := memory.New(memory.Options{Log: logging.For(root, "envd")})
	mux.Handle(guard.Wrap(processrpc.New(processrpc.Options{
		Processes: procs, Defaults: env, Gate: gate, Log: logging.For(root, "process"), Users: users.LookupUser,
		Busy: released.Busy, Idle: released.Idle,
	}).Handler(rpcOpts...)))
	mux.Handle(guard.Wrap(filesystemconnect.NewFilesystemHandler(fsrpc.New(env, watchers, gate, fsLog, fsrpc.Options{Users: users.LookupUser}), rpcOpts...)))

	// The live upgrade (control-plane.md §8). Its parts are quiesced and
	// exported in the order of §8.6; the incoming side restores them in
	// the order of §8.11 steps 9–16.
	apiListener := server.HandoverPart{S: srv}
	forwarding := &handover.PendingForwarding{F: forwarder}
	processes := handover.PendingProcesses{Count: procs.HandoverCounts}
	pollingWatchers := handover.PendingWatchers{Len: watchers.Len}
	mmdsPoll := mmds.HandoverPart{P: poller}
	initState := hostinit.HandoverPart{In: initializer}
	freezerState := freezer.HandoverPart{F: cgroupFreezer, Placement: cgroupManager}
	cpuSample := hostinfo.HandoverPart{S: metrics}
	upgrader := handover.NewUpgrader(handover.Options{
		Version:       version.Version,
		Commit:        version.Source(),
		Initialized:   initializer.Initialized,
		Prepared:      snapshot.Prepared,
		FSFrozen:      rootFS.Frozen,
		InitLock:      initializer.Hold,
		SnapshotLock:  snapshot.Hold,
		FSFreezeLock:  rootFS.Hold,
		CALock:        caInstaller.Hold,
		HyperloopLock: hyperloop.Hold,
		Freezer:       cgroupFreezer,
		SpawnLock:     reap.HoldSpawnLock,
		Parts:         []handover.Part{apiListener, forwarding, processes, mmdsPoll, pollingWatchers, initState, freezerState, cpuSample, staging},
		Spawner:       reap,
		Args:          os.Args[1:],
		Env:           execEnv,
		Corrupt:       testSettings.HandoverCorrupt,
		Log:           handoverLog,
	})
	(&api.Upgrade{Upgrader: upgrader}).Register(mux)
	incoming.Restore(initState, cpuSample, freezerState, processes, pollingWatchers, staging, mmdsPoll, apiListener, forwarding)
	incoming.Finish(handover.FinishOptions{
		Version:     version.Version,
		Initialized: initializer.Initialized,
		Thaw:        cgroupFreezer.ThawFallback,
		ThawFailed:  cgroupFreezer.ThawAfterFailedHandover,
		Fallback:    testSettings.HandoverFallback,
	})
	cgroupFreezer.Start() // after a handover's restore, which it then leaves alone
	if !cfg.IsNotFC {
		poller.Start(ctx) // the boot poll, or the poll a live upgrade carried
	}

	// Serving starts in the background so that a shutdown signal is heard
	// even while PID 1 is still retrying a port it cannot bind.
	served := make(chan error, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				served <- fmt.Errorf("panic while starting to serve: %v", p)
			}
		}()
		if err := srv.ListenRetry(ctx, pid1); err != nil {
			served <- err
			return
		}
		log.Info("listening", "address", srv.Addr().String())
		forwarder.Start()
		_ = procs.StartInitCmd(incoming.Cmd(cfg.Cmd)) // logged inside; never fatal
		served <- srv.Serve()
	}()

	reason := sigs.Await(served, pid1)
	upgrader.Close() // a shutdown signal must not be lost in an exec
	shutdown := &lifecycle.Shutdown{
		Log: log,
		Thaw: []lifecycle.Step{
			{Name: "root filesystem", Run: rootFS.ThawIfFrozen},
			{Name: "cgroups", Run: func() { cgroupFreezer.ThawIfInEffect("shutdown") }},
		},
		PID1:      pid1,
		FC:        !cfg.IsNotFC,
		Server:    srv,
		Quiesce:   []lifecycle.Step{{Name: "port forwarding", Run: forwarder.Stop}, {Name: "mmds", Run: poller.Stop}},
		Processes: procs,
		Release: []lifecycle.Step{
			{Name: "watchers", Run: watchers.Close},
			{Name: "control-plane watchdogs", Run: func() { cgroupFreezer.Stop(); rootFS.Stop(); incoming.Stop() }},
			{Name: "background", Run: func() { cancel(); hyperloop.Wait() }},
		},
		Reaper: reap,
	}
	shutdown.Run(reason, sigs.Hurry())
}
