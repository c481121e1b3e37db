// Command cubbyhole-apiserver is the stock apiextensions-apiserver run standalone, plus a
// thin shim that serves the core v1 kinds (and Leases, events.k8s.io Events) as CRDs so
// that kubectl, client-go and kube-rs can talk to it as if it were kube-apiserver.
// It is an e2e test fixture, not a Kubernetes distribution.
package main

import (
	"context"
	goflag "flag"
	"fmt"
	"net/http"
	"net/url"
	"os"

	"github.com/spf13/cobra"
	noopoteltrace "go.opentelemetry.io/otel/trace/noop"

	"k8s.io/apiextensions-apiserver/pkg/apiserver"
	"k8s.io/apiextensions-apiserver/pkg/cmd/server/options"
	generatedopenapi "k8s.io/apiextensions-apiserver/pkg/generated/openapi"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/apiserver/pkg/util/openapi"
	"k8s.io/apiserver/pkg/util/webhook"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/klog/v2"
)

// noServices: there is no Service API here, so webhook conversions by service cannot resolve.
type noServices struct{}

func (noServices) ResolveEndpoint(namespace, name string, port int32) (*url.URL, error) {
	return nil, fmt.Errorf("no Service API in cubbyhole-apiserver: cannot resolve %s/%s:%d (use a webhook URL)", namespace, name, port)
}

func main() {
	ctx := genericapiserver.SetupSignalContext()
	o := options.NewCustomResourceDefinitionsServerOptions(os.Stdout, os.Stderr)
	// No kube-apiserver behind us: no core informers, admission or delegated authz.
	o.RecommendedOptions.CoreAPI = nil
	o.RecommendedOptions.Admission = nil
	o.RecommendedOptions.Authorization = nil // AlwaysAllow
	o.RecommendedOptions.Authentication.RemoteKubeConfigFileOptional = true
	o.RecommendedOptions.Authentication.SkipInClusterLookup = true
	o.RecommendedOptions.Features.EnablePriorityAndFairness = false

	cmd := &cobra.Command{
		Use:   "cubbyhole-apiserver",
		Short: "apiextensions-apiserver with a core/v1 shim, for e2e tests",
		PersistentPreRunE: func(*cobra.Command, []string) error {
			return o.ServerRunOptions.ComponentGlobalsRegistry.Set()
		},
		RunE: func(c *cobra.Command, _ []string) error {
			if err := o.Complete(); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			return run(c.Context(), o)
		},
		SilenceUsage: true,
	}
	cmd.SetContext(ctx)
	o.AddFlags(cmd.Flags())
	klog.InitFlags(nil)
	cmd.Flags().AddGoFlagSet(goflag.CommandLine)
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "cubbyhole-apiserver:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o *options.CustomResourceDefinitionsServerOptions) error {
	serverConfig := genericapiserver.NewRecommendedConfig(apiserver.Codecs)
	if err := o.ServerRunOptions.ApplyTo(&serverConfig.Config); err != nil {
		return err
	}
	if err := o.RecommendedOptions.ApplyTo(serverConfig); err != nil {
		return err
	}
	if err := o.APIEnablement.ApplyTo(&serverConfig.Config, apiserver.DefaultAPIResourceConfigSource(), apiserver.Scheme); err != nil {
		return err
	}
	// Both OpenAPI versions: the CRD OpenAPI controllers only run when v2 is configured too,
	// and kubectl needs the CRD paths in /openapi/v3 for fieldValidation.
	defs := openapi.GetOpenAPIDefinitionsWithoutDisabledFeatures(generatedopenapi.GetOpenAPIDefinitions)
	namer := openapinamer.NewDefinitionNamer(apiserver.Scheme, scheme.Scheme)
	serverConfig.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(defs, namer)
	serverConfig.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(defs, namer)

	// The shim is the outermost handler; the namespace fix sits innermost, after RequestInfo.
	serverConfig.BuildHandlerChainFunc = func(h http.Handler, c *genericapiserver.Config) http.Handler {
		inner := genericapiserver.DefaultBuildHandlerChain(clusterScopedNamespaces(h), c)
		return newShim(inner)
	}

	config := &apiserver.Config{
		GenericConfig: serverConfig,
		ExtraConfig: apiserver.ExtraConfig{
			CRDRESTOptionsGetter: options.NewCRDRESTOptionsGetter(*o.RecommendedOptions.Etcd, serverConfig.ResourceTransformers, serverConfig.StorageObjectCountTracker),
			ServiceResolver:      noServices{},
			AuthResolverWrapper:  webhook.NewDefaultAuthenticationInfoResolverWrapper(nil, nil, serverConfig.LoopbackClientConfig, noopoteltrace.NewTracerProvider()),
		},
	}
	completed := config.Complete()
	completed.GenericConfig.EnableDiscovery = true // Complete() turns it off; we have no aggregator in front.

	server, err := completed.New(genericapiserver.NewEmptyDelegate())
	if err != nil {
		return err
	}
	server.GenericAPIServer.AddPostStartHookOrDie("cubbyhole-core-shim", func(hc genericapiserver.PostStartHookContext) error {
		return bootstrap(hc.Context, hc.LoopbackClientConfig)
	})
	return server.GenericAPIServer.PrepareRun().RunWithContext(ctx)
}
