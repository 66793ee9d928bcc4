package client_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/envd/envd/client"
)

// The examples talk to the envd at $ENVD_ADDR (started by TestMain when
// run as tests).

func Example() {
	ctx := context.Background()
	c, err := client.New(os.Getenv("ENVD_ADDR"))
	if err != nil {
		log.Fatal(err)
	}
	res, err := c.Run(ctx, "/bin/sh", []string{"-c", "echo hello from $(id -un); exit 3"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s%s\n", res.Stdout, res.Status)
	// Output:
	// hello from root
	// exit status 3
}

func ExampleClient_Start() {
	ctx := context.Background()
	c, _ := client.New(os.Getenv("ENVD_ADDR"))
	p, err := c.Start(ctx, "tr", []string{"a-z", "A-Z"}, client.WithStdin())
	if err != nil {
		log.Fatal(err)
	}
	if err := p.SendStdin(ctx, []byte("shout\n")); err != nil {
		log.Fatal(err)
	}
	if err := p.CloseStdin(ctx); err != nil {
		log.Fatal(err)
	}
	out, _ := io.ReadAll(p.Stdout())
	st, _ := p.Wait()
	fmt.Printf("%s%v\n", out, st.Success())
	// Output:
	// SHOUT
	// true
}

func ExampleClient_Connect() {
	ctx := context.Background()
	c, _ := client.New(os.Getenv("ENVD_ADDR"))
	// A background job: read its first line, then let go of it.
	p, err := c.Start(ctx, "/bin/sh", []string{"-c", "echo started; sleep 0.5; echo finished"}, client.WithTag("example-job"))
	if err != nil {
		log.Fatal(err)
	}
	line, _ := bufio.NewReader(p.Stdout()).ReadString('\n')
	fmt.Print(line)
	p.Close()

	// Later, from anywhere: attach by tag and collect the rest.
	q, err := c.Connect(ctx, client.Tag("example-job"))
	if err != nil {
		log.Fatal(err)
	}
	rest, _ := io.ReadAll(q.Stdout())
	st, _ := q.Wait()
	fmt.Printf("%s%s\n", rest, st.Status)
	// Output:
	// started
	// finished
	// exit status 0
}

func ExampleClient_Upload() {
	ctx := context.Background()
	c, _ := client.New(os.Getenv("ENVD_ADDR"))
	w, err := c.Upload(ctx, "/tmp/envd-example/notes.txt", strings.NewReader("remember the milk\n"), &client.UploadOptions{
		Gzip:     true,
		Metadata: map[string]string{"source": "example"},
	})
	if err != nil {
		log.Fatal(err)
	}
	b, err := c.ReadFile(ctx, w.Path)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(w.Path, " ", w.Metadata["source"], "\n", string(b))
	_ = c.Remove(ctx, "/tmp/envd-example")
	// Output:
	// /tmp/envd-example/notes.txt example
	// remember the milk
}

func ExampleClient_Stat() {
	ctx := context.Background()
	c, _ := client.New(os.Getenv("ENVD_ADDR"))
	_, err := c.Stat(ctx, "/no/such/file")
	fmt.Println(client.IsNotFound(err))
	var e *client.Error
	if errors.As(err, &e) {
		fmt.Println(e.Code, e.Status)
	}
	// Output:
	// true
	// not_found 404
}

func ExampleClient_Watch() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, _ := client.New(os.Getenv("ENVD_ADDR"))
	dir := "/tmp/envd-example-watch"
	if _, err := c.MakeDir(ctx, dir); err != nil && !client.IsAlreadyExists(err) {
		log.Fatal(err)
	}
	defer c.Remove(ctx, dir)
	w, err := c.WatchDir(ctx, dir, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()
	if _, err := c.WriteFile(ctx, dir+"/hello.txt", []byte("hi")); err != nil {
		log.Fatal(err)
	}
	for ev := range w.Events() {
		fmt.Println(ev.Type, ev.Name)
		if ev.Type == client.EventWrite {
			break
		}
	}
	// Output:
	// CREATE hello.txt
	// CHMOD hello.txt
	// WRITE hello.txt
}

func ExampleClient_DownloadURL() {
	c, _ := client.New("169.254.0.21", client.WithAccessToken("secret-access-token"), client.WithUser("user"))
	// Anyone holding this URL can read the file until the expiry, without
	// the token.
	fmt.Println(c.DownloadURL("/path/to/resource.txt", time.Unix(1767225600, 0)))
	// Output:
	// http://169.254.0.21:49983/files?path=%2Fpath%2Fto%2Fresource.txt&signature=v1_xP7uRSsxABJbGsHbF2oI%2B1KtSGduFq3p0nc9KKValmM&signature_expiration=1767225600&username=user
}

func ExampleExitStatus_Signal() {
	st := client.ExitStatus{Code: -1, Exited: false, Status: "signal: killed", Error: "signal: killed"}
	fmt.Println(st.Signaled(), st.Signal(), st.Err())
	// Output: true 9 process ended: signal: killed
}

func ExampleNewTransport() {
	// Keep the VM-over-TAP defaults but allow slower first bytes, for a
	// guest behind a congested proxy.
	tr := client.NewTransport()
	tr.ResponseHeaderTimeout = 2 * time.Minute
	c, err := client.New("10.11.0.2", client.WithHTTPClient(&http.Client{Transport: tr}))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(c.URL())
	// Output: http://10.11.0.2:49983
}
