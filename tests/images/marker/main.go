// A tiny static program for test images: prints a marker so tests can prove the image ran.
package main

import (
	"fmt"
	"os"
)

func main() {
	marker := os.Getenv("TOTE_MARKER")
	if marker == "" {
		marker = "tote-marker-ok"
	}
	fmt.Println(marker)
}
