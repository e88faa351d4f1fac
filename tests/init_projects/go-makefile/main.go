package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Print(Enum(os.Args[1], os.Args[2:]))
}
