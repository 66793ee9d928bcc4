package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/gen/filesystem/filesystemconnect"
	"github.com/envd/envd/gen/process"
	"github.com/envd/envd/gen/process/processconnect"
)

// target is one daemon under measurement and the clients used on it. Every
// target gets the same clients, so figures of different daemons compare
// like with like.
type target struct {
	label string
	url   string
	http  *http.Client
	// proc is a default Connect-Go client (binary codec, gzip accepted), as
	// the Wrenn host uses; used where messages are small (exec round trips).
	proc processconnect.ProcessClient
	// procRaw does not accept compressed responses: throughput figures
	// measure envd moving bytes, not gzip.
	procRaw processconnect.ProcessClient
	fs      filesystemconnect.FilesystemClient
}

func newTarget(label, url string) *target {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
	}
	c := &http.Client{Transport: tr}
	return &target{
		label:   label,
		url:     url,
		http:    c,
		proc:    processconnect.NewProcessClient(c, url),
		procRaw: processconnect.NewProcessClient(c, url, connect.WithAcceptCompression("gzip", nil, nil)),
		fs:      filesystemconnect.NewFilesystemClient(c, url),
	}
}

func (t *target) health(ctx context.Context) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, t.url+"/health", nil)
	resp, err := t.http.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/health: status %d", resp.StatusCode)
	}
	return nil
}

func (t *target) waitHealthy(ctx context.Context, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		err := t.health(ctx)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// execResult is what one Start stream delivered.
type execResult struct {
	stdout   int64
	exitCode int32
}

// exec runs cmd args through Start (stdin closed) under a 2-minute
// deadline and hands every stdout chunk to sink (which may be nil). It
// fails unless the stream ends with an end event and finishes cleanly.
func (t *target) exec(ctx context.Context, client processconnect.ProcessClient, sink func([]byte) error, cmd string, args ...string) (execResult, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	no := false
	stream, err := client.Start(ctx, connect.NewRequest(&process.StartRequest{
		Process: &process.ProcessConfig{Cmd: cmd, Args: args},
		Stdin:   &no,
	}))
	if err != nil {
		return execResult{}, err
	}
	defer stream.Close()
	var res execResult
	ended := false
	for stream.Receive() {
		switch e := stream.Msg().GetEvent().GetEvent().(type) {
		case *process.ProcessEvent_Data:
			out := e.Data.GetStdout()
			res.stdout += int64(len(out))
			if sink != nil && len(out) > 0 {
				if err := sink(out); err != nil {
					return res, err
				}
			}
		case *process.ProcessEvent_End:
			res.exitCode = e.End.GetExitCode()
			ended = true
		}
	}
	if err := stream.Err(); err != nil {
		return res, fmt.Errorf("%s: %w", cmd, err)
	}
	if !ended {
		return res, errors.New(cmd + ": stream finished without an end event")
	}
	return res, nil
}

// streamer runs a command through Start and hands every stdout chunk to
// sink: execBinary (the binary codec through connect-go) or execJSON.
type streamer func(ctx context.Context, sink func([]byte) error, cmd string, args ...string) (execResult, error)

func (t *target) execBinary(ctx context.Context, sink func([]byte) error, cmd string, args ...string) (execResult, error) {
	return t.exec(ctx, t.procRaw, sink, cmd, args...)
}

// shell runs a /bin/sh script and requires exit code 0.
func (t *target) shell(ctx context.Context, script string) error {
	res, err := t.exec(ctx, t.proc, nil, "/bin/sh", "-c", script)
	if err != nil {
		return err
	}
	if res.exitCode != 0 {
		return fmt.Errorf("script %q exited %d", script, res.exitCode)
	}
	return nil
}
