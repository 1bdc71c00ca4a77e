/** The folder of the portal's build, served by the coordinator at `/`. */
export declare const webRoot: string;
