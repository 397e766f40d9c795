package storage;

import java.io.Serializable;

/** The only exception {@link StorageItf} throws (COMPSs' exact API: four constructors, serialVersionUID 1). */
public class StorageException extends Exception implements Serializable {

    private static final long serialVersionUID = 1L;

    public StorageException() {
        super();
    }

    public StorageException(String message) {
        super(message);
    }

    public StorageException(Exception cause) {
        super(cause);
    }

    public StorageException(String message, Exception cause) {
        super(message, cause);
    }
}
