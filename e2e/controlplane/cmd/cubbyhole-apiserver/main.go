package main

import (
	"os"

	"k8s.io/apiextensions-apiserver/pkg/cmd/server"
	genericapiserver "k8s.io/apiserver/pkg/server"
	_ "k8s.io/apimachinery/pkg/util/strategicpatch"
	_ "k8s.io/api/core/v1"
	_ "k8s.io/client-go/dynamic"
)

func main() {
	cmd := server.NewServerCommand(genericapiserver.SetupSignalContext())
	if err := cmd.Execute(); err != nil {
		os.Exit(1)
	}
}
