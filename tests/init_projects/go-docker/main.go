// A fixture of pipekit's tests (shape: mattias-fjellstrom-demo/go-hello-world, see ../SOURCES.md).
package main

import (
	"fmt"
	"net/http"
)

func hello(w http.ResponseWriter, r *http.Request) {
	fmt.Fprintln(w, "Hello from the fixture")
}

func main() {
	http.HandleFunc("/", hello)
	_ = http.ListenAndServe(":8080", nil)
}
