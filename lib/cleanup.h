/* Scope-bound clean-up for the resources virtmount holds.
 *
 * Each CLEANUP_* attribute runs a destructor that accepts NULL when the
 * variable goes out of scope.  Assign NULL to a variable to keep what it
 * points to.
 */
#ifndef VIRTMOUNT_CLEANUP_H
#define VIRTMOUNT_CLEANUP_H

#include <pthread.h>
#include <stdlib.h>

void vm_cleanup_free(void *ptr);
void vm_cleanup_xml_doc(void *ptr);
void vm_cleanup_xml_xpath_ctx(void *ptr);
void vm_cleanup_xml_xpath_obj(void *ptr);
void vm_cleanup_vir_domain(void *ptr);
void vm_cleanup_vir_domain_list(void *ptr); /* virDomainPtr * from ListAllDomains */
void vm_cleanup_unlock(pthread_mutex_t **ptr);

#define CLEANUP_FREE       __attribute__((cleanup(vm_cleanup_free)))
#define CLEANUP_XML_DOC    __attribute__((cleanup(vm_cleanup_xml_doc)))
#define CLEANUP_XPATH_CTX  __attribute__((cleanup(vm_cleanup_xml_xpath_ctx)))
#define CLEANUP_XPATH_OBJ  __attribute__((cleanup(vm_cleanup_xml_xpath_obj)))
#define CLEANUP_VIR_DOMAIN __attribute__((cleanup(vm_cleanup_vir_domain)))

#define VM_CONCAT_(a, b) a##b
#define VM_CONCAT(a, b)  VM_CONCAT_(a, b)
/* Lock MUTEX until the end of the enclosing scope. */
#define ACQUIRE_LOCK_FOR_CURRENT_SCOPE(mutex)                                                      \
    __attribute__((cleanup(vm_cleanup_unlock))) pthread_mutex_t *VM_CONCAT(lock_, __LINE__) =      \
        (mutex);                                                                                   \
    pthread_mutex_lock(VM_CONCAT(lock_, __LINE__))

#endif
