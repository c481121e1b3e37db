package main

import (
	"context"
	"fmt"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
)

var defaultNamespaces = []string{"default", "kube-system", "kube-public", "kube-node-lease"}

// bootstrap runs as a post-start hook: /readyz stays unready until it returns, so clients
// never see missing resources or the 429 "storage is (re)initializing" of a cold CRD.
func bootstrap(ctx context.Context, loopback *rest.Config) error {
	start := time.Now()
	cfg := rest.CopyConfig(loopback)
	cfg.ContentType = "application/json"
	cfg.QPS, cfg.Burst = 1000, 1000
	ext, err := apiextensionsclient.NewForConfig(cfg)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}

	for _, k := range kinds {
		if err := ensureCRD(ctx, ext, k.crd()); err != nil {
			return fmt.Errorf("installing CRD for %s.%s: %w", k.plural, k.group, err)
		}
	}
	for _, k := range kinds {
		if err := waitEstablished(ctx, ext, k.plural+"."+k.group); err != nil {
			return err
		}
	}

	nsGVR := schema.GroupVersionResource{Group: privGroup, Version: "v1", Resource: "namespaces"}
	for _, name := range defaultNamespaces {
		ns := &unstructured.Unstructured{Object: map[string]interface{}{
			"apiVersion": privGV, "kind": "Namespace", "metadata": map[string]interface{}{"name": name},
		}}
		err := retry(ctx, func() error {
			_, err := dyn.Resource(nsGVR).Apply(ctx, name, ns, metav1.ApplyOptions{FieldManager: "cubbyhole-apiserver", Force: true})
			return err
		})
		if err != nil {
			return fmt.Errorf("creating namespace %s: %w", name, err)
		}
	}

	for _, k := range kinds {
		gvr := schema.GroupVersionResource{Group: k.group, Version: "v1", Resource: k.plural}
		err := retry(ctx, func() error {
			if _, err := dyn.Resource(gvr).List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
				return err
			}
			w, err := dyn.Resource(gvr).Watch(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			w.Stop()
			return nil
		})
		if err != nil {
			return fmt.Errorf("warming %s: %w", gvr, err)
		}
	}
	klog.Infof("cubbyhole-core-shim: %d kinds installed and warm in %v", len(kinds), time.Since(start))
	return nil
}

func ensureCRD(ctx context.Context, ext apiextensionsclient.Interface, want *apiextensionsv1.CustomResourceDefinition) error {
	return retry(ctx, func() error {
		crds := ext.ApiextensionsV1().CustomResourceDefinitions()
		_, err := crds.Create(ctx, want, metav1.CreateOptions{})
		if !apierrors.IsAlreadyExists(err) {
			return err
		}
		have, err := crds.Get(ctx, want.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		have.Spec = want.Spec
		if have.Annotations == nil {
			have.Annotations = map[string]string{}
		}
		for k, v := range want.Annotations {
			have.Annotations[k] = v
		}
		_, err = crds.Update(ctx, have, metav1.UpdateOptions{})
		return err
	})
}

func waitEstablished(ctx context.Context, ext apiextensionsclient.Interface, name string) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		crd, err := ext.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			for _, c := range crd.Status.Conditions {
				if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("CRD %s not Established after 60s (last error: %v)", name, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// retry absorbs the transient errors of a server that is still starting (429, conflicts).
func retry(ctx context.Context, f func() error) error {
	var err error
	for i := 0; i < 300; i++ {
		if err = f(); err == nil {
			return nil
		}
		klog.V(2).Infof("cubbyhole-core-shim: retrying: %v", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return err
}
