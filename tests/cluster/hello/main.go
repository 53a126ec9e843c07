// Command hello is the workload of the tote e2e cluster's test images: it prints a marker
// line (argument 1, else $TOTE_MARKER, else a default) and then sleeps until it is stopped.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	marker := os.Getenv("TOTE_MARKER")
	if len(os.Args) > 1 {
		marker = os.Args[1]
	}
	if marker == "" {
		marker = "tote-hello-ok"
	}
	fmt.Println(marker)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	<-sigs
}
