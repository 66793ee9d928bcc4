package client

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"
)

func TestOutputBuffer_BoundedAndOrdered(t *testing.T) {
	b := newOutputBuffer(8)
	b.write([]byte("abcd"))
	b.write([]byte("efgh"))
	blocked := make(chan struct{})
	go func() {
		b.write([]byte("ij")) // over the bound: waits for the reader
		b.finish(io.EOF)
		close(blocked)
	}()
	select {
	case <-blocked:
		t.Fatal("write did not wait while the buffer was full")
	case <-time.After(50 * time.Millisecond):
	}
	got, err := io.ReadAll(b)
	if err != nil || string(got) != "abcdefghij" {
		t.Fatalf("read %q, %v", got, err)
	}
	<-blocked
}

func TestOutputBuffer_OversizedChunkWhenEmpty(t *testing.T) {
	b := newOutputBuffer(4)
	big := bytes.Repeat([]byte("x"), 10)
	b.write(big) // an empty buffer takes any chunk, or it would never move
	b.finish(io.EOF)
	got, _ := io.ReadAll(b)
	if !bytes.Equal(got, big) {
		t.Fatalf("read %q", got)
	}
}

func TestOutputBuffer_CloseDiscardsAndUnblocks(t *testing.T) {
	b := newOutputBuffer(4)
	b.write([]byte("1234"))
	done := make(chan struct{})
	go func() { b.write([]byte("5")); b.write([]byte("678910")); close(done) }()
	time.Sleep(20 * time.Millisecond)
	b.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("writer still blocked after the reader closed")
	}
	if _, err := b.Read(make([]byte, 4)); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("read after close: %v", err)
	}
}

func TestOutputBuffer_FinishErrorAfterData(t *testing.T) {
	b := newOutputBuffer(16)
	b.write([]byte("tail"))
	boom := errors.New("boom")
	b.finish(boom)
	b.finish(io.EOF) // the first reason wins
	b.write([]byte("dropped"))
	p := make([]byte, 16)
	n, err := b.Read(p)
	if n != 4 || err != nil || string(p[:n]) != "tail" {
		t.Fatalf("read %q %v", p[:n], err)
	}
	if _, err := b.Read(p); err != boom {
		t.Fatalf("second read: %v", err)
	}
}
