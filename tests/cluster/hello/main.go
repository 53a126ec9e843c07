// Command hello is the workload of the tote e2e cluster's test images.
//
// By default it prints a marker line (argument 1, else $TOTE_MARKER, else a default) and then
// sleeps until it is stopped. With $TOTE_LISTEN (e.g. ":8080") it also answers every TCP
// connection there with the marker line, so other pods can check they reach it; with
// $TOTE_IGNORE_SIGTERM=1 it ignores SIGTERM (a container that only SIGKILL stops).
//
// `hello probe TARGET...` checks what this pod can reach and exits: one line per target,
// "OK target detail" or "FAIL target error". A target is `dns:NAME` (resolve through the
// pod's resolver), `tcp:HOST:PORT` (connect, read a line if one comes) or an http(s) URL
// (any HTTP answer counts as reached; certificates are not checked).
package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

const probeTimeout = 3 * time.Second

func probe(target string) string {
	switch {
	case strings.HasPrefix(target, "dns:"):
		addrs, err := net.LookupHost(strings.TrimPrefix(target, "dns:"))
		if err != nil {
			return fmt.Sprintf("FAIL %s %v", target, err)
		}
		return fmt.Sprintf("OK %s %s", target, strings.Join(addrs, ","))
	case strings.HasPrefix(target, "tcp:"):
		conn, err := net.DialTimeout("tcp", strings.TrimPrefix(target, "tcp:"), probeTimeout)
		if err != nil {
			return fmt.Sprintf("FAIL %s %v", target, err)
		}
		defer conn.Close()
		_ = conn.SetReadDeadline(time.Now().Add(probeTimeout))
		line, _ := bufio.NewReader(conn).ReadString('\n')
		return fmt.Sprintf("OK %s %s", target, strings.TrimSpace(line))
	default:
		client := &http.Client{
			Timeout: probeTimeout,
			Transport: &http.Transport{
				TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // reachability only
			},
		}
		resp, err := client.Get(target)
		if err != nil {
			return fmt.Sprintf("FAIL %s %v", target, err)
		}
		resp.Body.Close()
		return fmt.Sprintf("OK %s %d", target, resp.StatusCode)
	}
}

func serve(addr, marker string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(1)
	}
	for {
		conn, err := ln.Accept()
		if err != nil {
			continue
		}
		fmt.Fprintln(conn, marker)
		conn.Close()
	}
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "probe" {
		for _, t := range os.Args[2:] {
			fmt.Println(probe(t))
		}
		return
	}
	marker := os.Getenv("TOTE_MARKER")
	if len(os.Args) > 1 {
		marker = os.Args[1]
	}
	if marker == "" {
		marker = "tote-hello-ok"
	}
	fmt.Println(marker)
	if addr := os.Getenv("TOTE_LISTEN"); addr != "" {
		go serve(addr, marker)
	}
	sigs := make(chan os.Signal, 1)
	if os.Getenv("TOTE_IGNORE_SIGTERM") == "1" {
		signal.Ignore(syscall.SIGTERM)
		signal.Notify(sigs, syscall.SIGINT)
	} else {
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	}
	<-sigs
}
