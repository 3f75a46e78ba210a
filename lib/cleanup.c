/* Destructors behind cleanup.h's attributes.  Each accepts a pointer to a
 * variable that may hold NULL.
 */
#include "cleanup.h"

#include <libvirt/libvirt.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>

void vm_cleanup_free(void *ptr)
{
    free(*(void **)ptr);
}

void vm_cleanup_xml_doc(void *ptr)
{
    xmlDocPtr doc = *(xmlDocPtr *)ptr;
    if (doc)
        xmlFreeDoc(doc);
}

void vm_cleanup_xml_xpath_ctx(void *ptr)
{
    xmlXPathContextPtr ctx = *(xmlXPathContextPtr *)ptr;
    if (ctx)
        xmlXPathFreeContext(ctx);
}

void vm_cleanup_xml_xpath_obj(void *ptr)
{
    xmlXPathObjectPtr obj = *(xmlXPathObjectPtr *)ptr;
    if (obj)
        xmlXPathFreeObject(obj);
}

void vm_cleanup_vir_domain(void *ptr)
{
    virDomainPtr dom = *(virDomainPtr *)ptr;
    if (dom)
        virDomainFree(dom);
}

void vm_cleanup_vir_domain_list(void *ptr)
{
    virDomainPtr *list = *(virDomainPtr **)ptr;
    if (!list)
        return;
    for (size_t i = 0; list[i]; i++)
        virDomainFree(list[i]);
    free(list);
}

void vm_cleanup_unlock(pthread_mutex_t **ptr)
{
    if (*ptr)
        pthread_mutex_unlock(*ptr);
}
